"""Warming a model set up before its first request, while the app's server starts.

A request's one-time costs come from loading the set (reading and verifying the checkpoints, building the
networks), the first pass of each network (the CPU kernels set themselves up) and the first drawing of each
figure layout (matplotlib draws a template once; later requests paint into copies of it). ``warm_up`` pays
them once with the page's defaults on a grey image; ``start`` does it in a daemon thread, so that ``app.py``
imports gradio and builds the page meanwhile. Nothing here imports gradio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.torch  # noqa: F401 - imported here, not first in the thread (see ``start``)

from attnviz import settings as defaults
from attnviz.catalogue import Catalogue, catalogue
from attnviz.errors import AttnvizError
from attnviz.explainer import get_explainer
from attnviz.render import render_explanation
from attnviz.weights import Manifest, default_weights_dir


def weights_folder(weights_dir: str | Path | None) -> Path:
    """The weights folder the app uses (and keys its loaded sets by): the one given, else the default."""
    return Path(weights_dir) if weights_dir else default_weights_dir()


def startup_set(manifest: Manifest | Catalogue, requested: str | None = None) -> str | None:
    """The set the page starts with: the one asked for, else the manifest's default when it is installed, else
    the first installed one; None when ``requested`` is not installed or no set is (the app says so)."""
    names = manifest.set_names()
    if requested is not None:
        return requested if requested in names else None
    if not names:
        return None
    return manifest.default_set if manifest.default_set in names else names[0]


def warm_up(weights_dir: str | Path | None = None, set_name: str | None = None) -> float:
    """Load ``set_name`` (default: the start-up set), explain a grey image of its input size with every model
    and the page's defaults and draw every figure of it. Returns the seconds it took; raises AttnvizError when
    the set cannot be loaded or run."""
    started = time.perf_counter()
    sets = catalogue(weights_folder(weights_dir))
    name = set_name or startup_set(sets)
    if name is None:
        raise AttnvizError(f"no model set is installed in {sets.weights_dir}")
    explainer = get_explainer(name, str(sets.folder(name)))
    side = sets.get(name).preprocessing.crop
    settings = defaults.build_settings(explainer.classes, explainer.explainers)
    explanation = explainer.explain(np.full((side, side, 3), 128, np.uint8), settings)
    render_explanation(explanation, colormap=defaults.COLORMAP, opacity=defaults.OPACITY)
    return time.perf_counter() - started


def start(weights_dir: str | Path | None, set_name: str | None,
          log: Callable[[str], None] = print) -> threading.Thread | None:
    """``warm_up`` of the start-up set in a daemon thread; its outcome is one line through ``log``: the time, or
    what is wrong (the page still comes up, and says it again on each request). None, and no thread, when the
    set is not installed: the app reports that itself.

    Every module the warm-up uses is imported by this module, so that the thread imports nothing while the
    caller imports gradio (two threads importing modules that import each other can deadlock);
    tests/test_warmup.py checks it."""
    try:
        name = startup_set(catalogue(weights_folder(weights_dir)), set_name)
    except AttnvizError:  # e.g. a broken manifest: the app says what is wrong
        return None
    if name is None:
        return None

    def work() -> None:
        try:
            seconds = warm_up(weights_dir, name)
        except AttnvizError as exc:
            log(f"error: model set {name!r} could not be loaded and run: {exc}")
        except Exception as exc:  # noqa: BLE001 - a thread's failure would otherwise be a traceback on stderr
            log(f"error: model set {name!r} could not be loaded and run ({type(exc).__name__}: {exc}); each "
                f"request will say what is wrong")
        else:
            log(f"attnviz: model set {name!r} loaded and run once in {seconds:.1f} s")

    thread = threading.Thread(target=work, name="attnviz-warm-up", daemon=True)
    thread.start()
    return thread


__all__ = ["start", "startup_set", "warm_up", "weights_folder"]
