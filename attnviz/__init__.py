"""attnviz: look inside ResNet50, ResNet50+SE and ResNet50+CBAM side by side.

The public API is imported lazily, so ``python -m attnviz.weights`` and the
other command modules start without loading everything first. No submodule
may share a public name: importing ``attnviz.X`` sets the package attribute
``X`` to the module, which would hide the function of that name
(tests/test_public_api.py guards it).
"""

from importlib import import_module

_PUBLIC = {
    "AttnvizError": "attnviz.errors",
    "ExplainSettings": "attnviz.explainer",
    "Explainer": "attnviz.explainer",
    "Explanation": "attnviz.explainer",
    "explain": "attnviz.explainer",
    "explain_many": "attnviz.explainer",
    "ModelSpec": "attnviz.models",
    "build_model": "attnviz.models",
    "build_resnet50": "attnviz.models",
    "load_model_set": "attnviz.weights",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'attnviz' has no attribute {name!r}")
