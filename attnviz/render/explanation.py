"""Everything drawn for one explanation (``render_explanation``) and the export zip."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from attnviz.attention import RECORD_KINDS
from attnviz.render.charts import channel_weights_figure, spatial_maps_figure, topk_chart
from attnviz.render.compare import agreement_figure, difference_figure
from attnviz.render.pixels import check_style, difference_overlay, overlay
from attnviz.results import Explanation, ModelResult


def _channel_figure(view: np.ndarray, result: ModelResult, colormap: str) -> np.ndarray | None:
    return channel_weights_figure(result.attention, f"{result.title}: channel attention weights per block")


def _spatial_figure(view: np.ndarray, result: ModelResult, colormap: str) -> np.ndarray | None:
    return spatial_maps_figure(view, result.attention, colormap, title=f"{result.title}: spatial attention")


# How each record kind is drawn: (view, one model's result, colormap) -> picture, or None when nothing to draw.
KIND_FIGURES: dict[str, Callable[[np.ndarray, ModelResult, str], np.ndarray | None]] = {
    "channel": _channel_figure,
    "spatial": _spatial_figure,
}
assert set(KIND_FIGURES) == set(RECORD_KINDS), "every record kind needs a figure"


def attention_figures(view: np.ndarray, result: ModelResult, colormap: str = "jet") -> dict[str, np.ndarray]:
    """One figure per record kind the model's blocks produced, keyed by the kind's figure name
    (e.g. "channel_weights", "spatial_maps"), in the order the kinds are declared."""
    present = {kind for record in result.attention for kind in record.kinds.values()}
    out = {}
    for kind in RECORD_KINDS.values():
        if kind.key in present:
            image = KIND_FIGURES[kind.key](view, result, colormap)
            if image is not None:
                out[kind.figure] = image
    return out


@dataclass
class RenderedModel:
    result: ModelResult
    overlay: np.ndarray
    figures: dict[str, np.ndarray]  # figure name ("channel_weights", "spatial_maps") -> picture; none without gates
    knockout_overlay: np.ndarray | None = None  # the heatmap with the knocked-out gates off, when they were
    knockout_difference: np.ndarray | None = None  # that heatmap minus the trained one, over the grey view

    @property
    def channel_weights(self) -> np.ndarray | None:
        return self.figures.get(RECORD_KINDS["channel"].figure)

    @property
    def spatial_maps(self) -> np.ndarray | None:
        return self.figures.get(RECORD_KINDS["spatial"].figure)

    @cached_property
    def topk(self) -> np.ndarray:
        """The top-k chart, drawn when first asked for (exports and reports; the page shows a label)."""
        return topk_chart(self.result)


@dataclass
class Rendered:
    """Every picture of one explanation, as uint8 RGB arrays."""

    view: np.ndarray
    models: dict[str, RenderedModel]
    difference: np.ndarray | None  # None with a single model
    agreement: np.ndarray
    colormap: str
    opacity: float

    def images(self) -> dict[str, np.ndarray]:
        """File name -> picture, for every picture there is."""
        out = {"view.png": self.view}
        for variant, model in self.models.items():
            out[f"{variant}_overlay.png"] = model.overlay
            out[f"{variant}_top_k.png"] = model.topk
            for name, image in model.figures.items():
                out[f"{variant}_{name}.png"] = image
            if model.knockout_overlay is not None:
                out[f"{variant}_knockout_overlay.png"] = model.knockout_overlay
                out[f"{variant}_knockout_difference.png"] = model.knockout_difference
        if self.difference is not None:
            out["difference_maps.png"] = self.difference
        out["agreement.png"] = self.agreement
        return out


def render_explanation(explanation: Explanation, colormap: str = "jet", opacity: float = 0.5,
                       drawn: Callable[[str, np.ndarray], None] | None = None) -> Rendered:
    """All the pictures the app shows for one explanation (the top-k charts are drawn when first used).

    ``drawn(name, picture)`` is told of each picture as soon as it exists, by its file name without ".png"
    (``Rendered.images``): the view and the heatmaps first, the figures after, so that a caller can write the
    first ones while the rest are drawn."""
    check_style(colormap, opacity)
    tell = drawn or (lambda name, picture: None)
    view = explanation.view
    tell("view", view)
    models = {}
    for variant, result in explanation.results.items():
        knocked = result.knockout if result.knockout is not None and result.knockout.affected else None
        models[variant] = RenderedModel(
            result=result,
            overlay=overlay(view, result.heatmap, colormap, opacity),
            figures={},
            knockout_overlay=None if knocked is None else overlay(view, knocked.heatmap, colormap, opacity),
            knockout_difference=None if knocked is None else difference_overlay(view, result.heatmap,
                                                                               knocked.heatmap),
        )
        tell(f"{variant}_overlay", models[variant].overlay)
        if knocked is not None:
            tell(f"{variant}_knockout_overlay", models[variant].knockout_overlay)
            tell(f"{variant}_knockout_difference", models[variant].knockout_difference)
    for variant, result in explanation.results.items():
        models[variant].figures = attention_figures(view, result, colormap)
        for name, picture in models[variant].figures.items():
            tell(f"{variant}_{name}", picture)
    difference = difference_figure(explanation)
    if difference is not None:
        tell("difference_maps", difference)
    agreement = agreement_figure(explanation)
    tell("agreement", agreement)
    return Rendered(view=view, models=models, difference=difference, agreement=agreement, colormap=colormap,
                    opacity=opacity)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def export_zip(explanation: Explanation, rendered: Rendered, path: str | Path) -> Path:
    """Write one .zip: every picture as PNG, heatmaps.npz, attention.npz and summary.json; returns its path.

    heatmaps.npz holds ``view`` and, per model, ``<variant>`` (the CAM) and ``<variant>_probabilities`` (and
    ``<variant>_knockout`` / ``<variant>_knockout_probabilities`` with gates switched off);
    attention.npz holds ``<variant>/<block>/<record>`` for every record of every block, e.g.
    ``cbam/layer3.2/channel_weights`` and ``cbam/layer3.2/spatial_map``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heatmaps: dict[str, np.ndarray] = {"view": explanation.view}
    attention: dict[str, np.ndarray] = {}
    for variant, result in explanation.results.items():
        heatmaps[variant] = result.heatmap
        heatmaps[f"{variant}_probabilities"] = result.probabilities
        if result.knockout is not None and result.knockout.affected:
            heatmaps[f"{variant}_knockout"] = result.knockout.heatmap
            heatmaps[f"{variant}_knockout_probabilities"] = result.knockout.probabilities
        for record in result.attention:
            for name, values in record.records.items():
                attention[f"{variant}/{record.block}/{name}"] = values
    images = rendered.images()
    summary = explanation.summary()
    summary["classes"] = list(explanation.classes)
    summary["render"] = {"colormap": rendered.colormap, "opacity": rendered.opacity}
    summary["files"] = [*images, "heatmaps.npz", *(["attention.npz"] if attention else []), "summary.json"]
    # PNG and .npz are compressed already: stored as they are, only the JSON is deflated.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, image in images.items():
            archive.writestr(name, _png(image))
        archive.writestr("heatmaps.npz", _npz(heatmaps))
        if attention:
            archive.writestr("attention.npz", _npz(attention))
        archive.writestr("summary.json", json.dumps(summary, indent=2, ensure_ascii=False),
                         compress_type=zipfile.ZIP_DEFLATED)
    return path
