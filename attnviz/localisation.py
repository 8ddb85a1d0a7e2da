"""One image's localisation numbers: a heatmap against an object's true mask, with the analysis' definitions
(pointing game, energy in mask, mask IoU) and its threshold and tolerance; the scene lab and its tab use them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from attnviz.errors import AttnvizError

FALLBACK_THRESHOLD = 0.5  # the analysis' IoU threshold before its val scenes choose one (attnviz.analysis.run._Context)


@dataclass(frozen=True)
class LocalisationSettings:
    """The pointing game's tolerance and the mask IoU's threshold, and where they come from."""

    threshold: float  # a share of each map's maximum
    tolerance: float  # pixels of the model's input
    source: str


@dataclass(frozen=True)
class SceneMetrics:
    """One heatmap against one object's true mask, with the analysis' definitions."""

    pointing_hit: bool  # the map's maximum within ``tolerance`` px of the object
    energy_in_mask: float  # the share of the map's mass on the object
    mask_iou: float  # IoU of the object and the map's region at or above ``threshold`` of its maximum
    area_share: float  # the object's share of the image: energy in mask's chance level
    threshold: float
    tolerance: float
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def localisation_settings(set_name: str | None = None, weights_dir: Path | str | None = None) -> LocalisationSettings:
    """The threshold and tolerance of the set's analysis (its analysis.json), else the analysis' defaults."""
    from attnviz.analysis.config import AnalysisConfig
    from attnviz.analysis.results import analysis_dir, read_result

    folder = analysis_dir(weights_dir, set_name)
    defaults = f"the analysis' defaults (IoU threshold {FALLBACK_THRESHOLD:g}, tolerance {{:g}} px)"
    tolerance = AnalysisConfig().tolerance
    if not (folder / "analysis.json").is_file():
        return LocalisationSettings(
            FALLBACK_THRESHOLD, tolerance, f"no analysis of this set: {defaults}".format(tolerance)
        )
    try:
        result = read_result(folder)
    except AttnvizError as error:
        return LocalisationSettings(FALLBACK_THRESHOLD, tolerance, f"{error}; until then {defaults}".format(tolerance))
    threshold = result["threshold"]
    tolerance = float(result.get("config", {}).get("tolerance", tolerance))
    source = f"{folder / 'analysis.json'}: threshold chosen on {threshold['chosen_on']}, tolerance of that analysis"
    return LocalisationSettings(float(threshold["value"]), tolerance, source)


def view_mask(mask: np.ndarray, preprocessing) -> np.ndarray:
    """A scene mask through the set's own resize and crop, so that it lies on the pixels the model sees."""
    from attnviz.images import preprocess

    grey = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return preprocess(Image.fromarray(grey), preprocessing).view[..., 0] >= 128


def scene_metrics(heatmap: np.ndarray, mask: np.ndarray, settings: LocalisationSettings) -> SceneMetrics:
    """This image's pointing-game hit, energy in mask and mask IoU for one model's heatmap (H, W) in [0, 1]
    at the model's view and one object's mask at the same view (``view_mask``), as the analysis measures them."""
    from attnviz import metrics

    heatmap, mask = np.asarray(heatmap, np.float32), np.asarray(mask, bool)
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} must be one (H, W) view")
    distance = metrics.distance_to_mask(mask)
    return SceneMetrics(
        pointing_hit=bool(metrics.pointing_hits(heatmap[None], distance[None], settings.tolerance)[0]),
        energy_in_mask=float(metrics.energy_in_mask(heatmap[None], mask[None])[0]),
        mask_iou=float(metrics.mask_iou(heatmap[None], mask[None], settings.threshold)[0]),
        area_share=float(metrics.area_share(mask[None])[0]),
        threshold=settings.threshold,
        tolerance=settings.tolerance,
        source=settings.source,
    )
