"""One home for the defaults of a request, ``ExplainSettings`` (what to explain, checked), and the one function
that turns what a front end received (the app's controls, the batch command's options, the library's keyword
arguments) into them.

    build_settings(classes, method="layercam", target="dog", models=["se", "cbam"])
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from attnviz.errors import AttnvizError
from attnviz.methods import CAM_METHODS

# torch and the models load when a request is checked, not on import: the ``attnviz`` command starts without them

METHOD = "gradcam"
LAYER = "layer4"
TOP_K = 5
COLORMAP = "jet"
OPACITY = 0.5
TIME_LIMIT_S = 300  # slow methods (Score-CAM, Ablation-CAM) stop after this, per request; None: no limit
PRECISION = "fp32"
KNOCKOUT_VALUE = "identity"  # what a switched-off gate outputs: 1, or its mean ("mean")
SCORE_CAM_BATCH = 4  # masked copies per pass: as fast per image as 8 or 32 here, and under 100 MB over a forward
SET_CACHE_MB = 768  # loaded model sets kept (parameters and buffers): built-in + ImageNet fit (attnviz.set_cache)
OWN_TOP1 = "own top-1"  # the target that means "each model's own top-1" (also None or "")


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain; every field has the app's default (``attnviz.settings``), which builds it from a front
    end's values with ``build_settings``."""

    method: str = METHOD
    layer: str = LAYER
    target: int | None = None  # a class index of the set, or None for each model's own top-1
    top_k: int = TOP_K
    aug_smooth: bool = False
    eigen_smooth: bool = False
    variants: tuple[str, ...] | None = None  # None: every model of the set
    time_limit: float | None = TIME_LIMIT_S  # seconds for the slow methods, per request
    score_cam_batch: int = SCORE_CAM_BATCH
    precision: str = PRECISION  # "bf16": the image's own pass under bfloat16 autocast; maps stay float32
    knockout: str | None = None  # gates to switch off, e.g. "layer4.*:spatial" (attnviz.knockout); None: none
    knockout_value: str = KNOCKOUT_VALUE  # what a switched-off gate outputs: "identity" (1) or "mean"

    def validate(self, classes: list[str]) -> None:
        from attnviz.knockout import KNOCKOUT_VALUES
        from attnviz.models import VARIANTS, target_layer_help

        if self.method not in CAM_METHODS:
            raise AttnvizError(
                f"unknown CAM method {self.method!r}; choose one of {', '.join(CAM_METHODS)}",
                code="choice",
            )
        refusal = CAM_METHODS[self.method].refusal(self.aug_smooth, self.eigen_smooth)
        if refusal:
            raise AttnvizError(refusal, code="choice")
        if not any(self.layer in _valid_layers(v) for v in VARIANTS):
            raise AttnvizError(f"unknown target layer {self.layer!r}; choose {target_layer_help()}", code="choice")
        if self.target is not None and not 0 <= self.target < len(classes):
            raise AttnvizError(
                f"target class {self.target} is outside this set's {len(classes)} classes",
                code="choice",
            )
        if self.top_k < 1:
            raise AttnvizError("top-k must be at least 1", code="choice")
        if self.precision not in PRECISIONS:
            raise AttnvizError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}",
                code="choice",
            )
        if self.knockout_value not in KNOCKOUT_VALUES:
            raise AttnvizError(f"unknown knock-out value {self.knockout_value!r}; choose one of "
                               f"{', '.join(KNOCKOUT_VALUES)}", code="choice")


@functools.cache
def _valid_layers(variant: str) -> frozenset[str]:
    from attnviz.models import target_layer_names

    return frozenset(target_layer_names(variant))


def check_layer(layer: str, variants: list[str]) -> None:
    """One line when a chosen model has no such target layer (e.g. an attention module in the plain ResNet50)."""
    from attnviz.attention import family
    from attnviz.models import target_layer_help

    for variant in variants:
        if layer not in _valid_layers(variant):
            raise AttnvizError(f"{family(variant).title} has no target layer {layer!r}; choose "
                               f"{target_layer_help()}", code="choice")


def resolve_target(target: int | str | None, classes: Sequence[str]) -> int | None:
    """A class name, an index (or its digits) or "each model's own top-1" (None, "", OWN_TOP1) as an index."""
    if target is None or target == "" or target == OWN_TOP1:
        return None
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
        index = int(target)
        if 0 <= index < len(classes):
            return index
        raise AttnvizError(f"target class {index} is outside this set's {len(classes)} classes", code="choice")
    shown = ", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "")
    raise AttnvizError(f"target class {target!r} is not a class of this set; give a name or an index: {shown}",
                       code="choice")


def choose_models(models: Iterable[str] | None, available: Iterable[str]) -> tuple[str, ...]:
    """The chosen models in the usual order (every available one for None); one line when one is unknown or none
    is left."""
    from attnviz.models import VARIANTS

    available = list(available)
    if models is None:
        return tuple(v for v in VARIANTS if v in available)
    models = list(models)
    missing = [m for m in models if m not in available]
    if missing:
        raise AttnvizError(f"this model set has no model {missing[0]!r}; it has {', '.join(available)}",
                           code="choice")
    chosen = tuple(v for v in VARIANTS if v in models)
    if not chosen:
        raise AttnvizError("no model chosen: choose at least one of the set's models", code="choice")
    return chosen


def _variants(models: Iterable[str] | None, available: Iterable[str] | None) -> tuple[str, ...] | None:
    if available is not None:
        return choose_models(models, available)
    return None if models is None else tuple(models)  # checked against the set when it is explained


def build_settings(
    classes: Sequence[str],
    available: Iterable[str] | None = None,
    *,
    method: str = METHOD,
    layer: str = LAYER,
    target: int | str | None = None,
    top_k: int = TOP_K,
    models: Iterable[str] | None = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    time_limit: float | None = TIME_LIMIT_S,
    precision: str | None = PRECISION,
    knockout: str | None = None,
    knockout_value: str | None = KNOCKOUT_VALUE,
    score_cam_batch: int = SCORE_CAM_BATCH,
) -> ExplainSettings:
    """Checked ``ExplainSettings`` for a set with ``classes`` and the models ``available`` (None: choose later,
    from the whole set). Empty values from a form (None, "") mean the default; top-k is capped at the classes."""
    settings = ExplainSettings(
        method=method or METHOD,
        layer=layer or LAYER,
        target=resolve_target(target, classes),
        top_k=min(int(top_k), len(classes)),
        aug_smooth=bool(aug_smooth),
        eigen_smooth=bool(eigen_smooth),
        variants=_variants(models, available),
        time_limit=time_limit,
        score_cam_batch=score_cam_batch,
        precision=precision or PRECISION,
        knockout=(knockout or "").strip() or None,
        knockout_value=knockout_value or KNOCKOUT_VALUE,
    )
    settings.validate(list(classes))
    return settings
