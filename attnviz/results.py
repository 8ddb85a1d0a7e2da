"""What an explanation produces, as plain data (dataclasses of arrays and numbers): ``render`` draws it.

    result.results["cbam"].top[0].name         # the top-1 class of ResNet50 + CBAM
    result.results["cbam"].attention[0].records["channel_weights"]   # layer1.0's channel weights
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from attnviz.attention import family
from attnviz.capture import BlockAttention

if TYPE_CHECKING:
    from attnviz.explainer import ExplainSettings

__all__ = ["BlockAttention", "Prediction", "KnockoutResult", "ModelResult", "Explanation", "GridResult", "BatchResult",
           "top_region_mask", "masks_iou", "top_region_iou"]


@dataclass
class Prediction:
    index: int
    name: str
    probability: float


@dataclass
class KnockoutResult:
    """One model's answer with some attention gates switched off, next to its answer as trained."""

    spec: str  # the knock-out spec asked for, e.g. "layer4.*:spatial"
    value: str  # what the gates output instead: "identity" (1) or "mean" (their mean over validation scenes)
    gates: list[str]  # the gates switched off in this model ("layer4.0:spatial", ...); empty: unaffected
    probabilities: np.ndarray
    top: list[Prediction]
    target: Prediction  # the class the trained model's heatmap explains, with its probability now
    heatmap: np.ndarray  # that class's heatmap with the gates off
    attention: list[BlockAttention]  # the records as the network ran (a switched-off gate shows its value)
    target_change: float  # the target's probability now minus as trained
    iou_top20: float  # IoU of the top-20 % regions of the heatmaps as trained and with the gates off

    @property
    def affected(self) -> bool:
        return bool(self.gates)

    def summary(self) -> dict:
        return {
            "spec": self.spec,
            "value": self.value,
            "gates": self.gates,
            "affected": self.affected,
            "note": "" if self.affected else "this model has none of these gates: unaffected",
            "top": [vars(p) for p in self.top],
            "target": vars(self.target),
            "target_probability_change": round(self.target_change, 6),
            "iou_top20": round(self.iou_top20, 4),
        }


@dataclass
class ModelResult:
    variant: str
    probabilities: np.ndarray  # (classes,) softmax of the image's own pass
    top: list[Prediction]
    target: Prediction  # the class the heatmap explains
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], scaled to its own maximum
    attention: list[BlockAttention]  # one per attention block, in forward order; empty without attention
    seconds: float
    knockout: KnockoutResult | None = None  # the same with gates switched off, when asked for
    # how far the image is from the training scenes (higher: farther; attnviz.domain) and whether that is past
    # the model's threshold; None: the model has no fitted statistics (not calibrated)
    domain_score: float | None = None
    domain_threshold: float | None = None  # the model's threshold: a score above it is out of domain
    out_of_domain: bool | None = None

    @property
    def title(self) -> str:
        return family(self.variant).title


@dataclass
class Explanation:
    """Everything one request produced, as plain data; ``render`` turns it into pictures."""

    view: np.ndarray  # (H, W, 3) uint8: the preprocessed image all models saw
    classes: list[str]
    set_name: str
    settings: ExplainSettings
    results: dict[str, ModelResult] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)  # "a|b" -> IoU of the top-20 % regions

    @property
    def out_of_domain(self) -> bool | None:
        """True when any shown model flags the image as far from its training scenes; None when none of them is
        calibrated (no fitted statistics, e.g. an imported set)."""
        known = [r.out_of_domain for r in self.results.values() if r.out_of_domain is not None]
        return any(known) if known else None

    def summary(self) -> dict:
        """Predictions, agreement and settings as JSON-ready data."""
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.settings).items()}
        return {
            "set": self.set_name,
            "settings": settings,
            "models": {
                v: {
                    "title": r.title,
                    "top": [vars(p) for p in r.top],
                    "target": vars(r.target),
                    "seconds": round(r.seconds, 4),
                    "domain_score": None if r.domain_score is None else round(r.domain_score, 4),
                    "domain_threshold": None if r.domain_threshold is None else round(r.domain_threshold, 4),
                    "out_of_domain": r.out_of_domain,
                    **({"knockout": r.knockout.summary()} if r.knockout is not None else {}),
                }
                for v, r in self.results.items()
            },
            "agreement_top20_iou": self.agreement,
            "out_of_domain": self.out_of_domain,
        }


@dataclass
class GridResult:
    """One model's maps for several methods x layers x target classes, all from one forward pass."""

    variant: str
    probabilities: np.ndarray  # (classes,)
    maps: dict[tuple[str, str, int], np.ndarray]  # (method, layer, class index) -> (H, W) float32 in [0, 1]
    attention: list[BlockAttention]
    seconds: float


@dataclass
class BatchResult:
    """One model's pass over a batch, each image with its own target: logits, maps and attention records."""

    logits: torch.Tensor  # (B, classes) float32
    maps: dict[tuple[str, str], np.ndarray]  # (method, layer) -> (B, H, W) float32 in [0, 1]
    records: dict[str, dict[str, np.ndarray]]  # block -> record name -> (B, ...) float32
    kinds: dict[str, str]  # record name -> record kind
    targets: list[int] = field(default_factory=list)  # the class each image's maps explain (a None target resolved)

    def of_kind(self, kind: str) -> dict[str, np.ndarray]:
        """block -> (B, ...) for the records of ``kind`` (the first such record of each block)."""
        out = {}
        for block, records in self.records.items():
            for name, values in records.items():
                if self.kinds[name] == kind:
                    out[block] = values
                    break
        return out


def top_region_mask(values: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Boolean mask, shaped like ``values``, of its ``fraction`` highest-valued pixels.

    Exactly k pixels: every pixel above the k-th highest value, then, among pixels equal to it, the last ones in
    raster order (the pixels a stable ascending sort puts last). A partition instead of a sort: linear time.
    """
    flat = np.asarray(values).ravel()
    k = max(1, int(round(fraction * flat.size)))
    kth = np.partition(flat, flat.size - k)[flat.size - k]
    mask = flat > kth
    missing = k - int(mask.sum())
    if missing:
        mask[np.flatnonzero(flat == kth)[-missing:]] = True
    return mask.reshape(np.shape(values))


def masks_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(int((a | b).sum()), 1))


def top_region_iou(a: np.ndarray, b: np.ndarray, fraction: float = 0.2) -> float:
    """IoU of the ``fraction`` highest-valued pixels of two maps of one size."""
    return masks_iou(top_region_mask(a, fraction), top_region_mask(b, fraction))
