"""One home for the defaults of a request, and the one function that turns what a front end received (the
app's controls, the batch command's options, the library's keyword arguments) into ``ExplainSettings``.

    build_settings(classes, method="layercam", target="dog", models=["se", "cbam"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from attnviz.errors import AttnvizError

if TYPE_CHECKING:
    from attnviz.explainer import ExplainSettings

METHOD = "gradcam"
LAYER = "layer4"
TOP_K = 5
COLORMAP = "jet"
OPACITY = 0.5
TIME_LIMIT_S = 300  # slow methods (Score-CAM, Ablation-CAM) stop after this, per request; None: no limit
PRECISION = "fp32"
KNOCKOUT_VALUE = "identity"  # what a switched-off gate outputs: 1, or its mean ("mean")
SCORE_CAM_BATCH = 32
OWN_TOP1 = "own top-1"  # the target that means "each model's own top-1" (also None or "")


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
    from attnviz.explainer import ExplainSettings

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
