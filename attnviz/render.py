"""Results to pictures: CAM overlays, top-k charts, attention figures, comparisons, and the export zip.

Everything here takes the plain data of an ``Explanation`` and returns uint8
RGB arrays; nothing is computed about the models. Figures are matplotlib
``Figure`` objects drawn on the Agg canvas without pyplot, so no figure is
registered globally, concurrent requests share no drawing state, and each
figure is cleared as soon as it has been turned into pixels.

    rendered = render_explanation(explanation, colormap="jet", opacity=0.5)
    rendered.models["cbam"].overlay          # (H, W, 3) uint8
    export_zip(explanation, rendered, "attnviz.zip")
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from attnviz.errors import AttnvizError
from attnviz.explain import BlockAttention, Explanation, ModelResult, top_region_mask
from attnviz.models import VARIANT_TITLES

COLORMAPS = ("jet", "turbo", "inferno", "magma", "viridis", "plasma", "hot", "gray")
DIFFERENCE_COLORMAP = "RdBu_r"
ATTENTION_COLORMAP = "viridis"
TOP_FRACTION = 0.2  # the agreement figure compares each map's top 20 % of pixels
VARIANT_COLOURS = {"resnet50": "#1f77b4", "se": "#ff7f0e", "cbam": "#2ca02c"}
DPI = 100

_DRAW_LOCK = threading.Lock()  # Agg text rendering shares font objects; drawing is quick next to the models


def _cjk_font() -> str | None:
    """The name of an installed CJK font (e.g. fonts-noto-cjk), or None."""
    from matplotlib import font_manager

    for font in font_manager.fontManager.ttflist:
        if any(mark in font.name for mark in ("CJK", "Source Han", "WenQuanYi", "Noto Sans SC", "Droid Sans Fallback")):
            return font.name
    return None


def _use_cjk_fallback() -> None:
    """Let figure labels (e.g. class names of an imported set) show Chinese when a CJK font is installed."""
    name = _cjk_font()
    if name and name not in matplotlib.rcParams["font.sans-serif"]:
        matplotlib.rcParams["font.sans-serif"] = [*matplotlib.rcParams["font.sans-serif"], name]


_use_cjk_fallback()


# --------------------------------------------------------------------------- pixels


def _check_style(colormap: str, opacity: float) -> None:
    if colormap not in colormaps:
        raise AttnvizError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if not 0.0 <= opacity <= 1.0:
        raise AttnvizError(f"opacity must be between 0 and 1, not {opacity}")


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D float map resized bilinearly to (height, width)."""
    values = np.asarray(values, np.float32)
    if values.shape == tuple(size):
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def colorize(values: np.ndarray, colormap: str = "jet", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """A 2-D map through a matplotlib colormap, as (H, W, 3) uint8."""
    normalised = np.clip((np.asarray(values, np.float32) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    rgba = colormaps[colormap](normalised)
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(view: np.ndarray, heatmap: np.ndarray, colormap: str = "jet", opacity: float = 0.5,
            vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """The heatmap, coloured and resized to the view, blended over it: (H, W, 3) uint8, no colorbar."""
    _check_style(colormap, opacity)
    coloured = colorize(resize_map(heatmap, view.shape[:2]), colormap, vmin, vmax).astype(np.float32)
    blended = (1.0 - opacity) * view.astype(np.float32) + opacity * coloured
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _grey(view: np.ndarray) -> np.ndarray:
    """The view in grey, lightened, as a quiet background for comparison maps."""
    grey = view.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = 0.35 * 255.0 + 0.65 * grey
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


# --------------------------------------------------------------------------- figures


@contextmanager
def _figure(width: float, height: float, **kwargs) -> Iterator[Figure]:
    """A pyplot-free figure, cleared on exit whether drawing succeeded or not."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)
    try:
        yield figure
    finally:
        figure.clear()


def _pixels(figure: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    with _DRAW_LOCK:
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        return rgba[..., :3].copy()


def topk_chart(result: ModelResult) -> np.ndarray:
    """Horizontal bars of the top-k probabilities, the explained class in a stronger colour."""
    top = result.top
    with _figure(4.6, 0.42 * len(top) + 0.9) as fig:
        ax = fig.add_subplot()
        names = [p.name for p in top][::-1]
        values = [p.probability for p in top][::-1]
        colours = ["#d62728" if p.index == result.target.index else "#9aa5b1" for p in top][::-1]
        bars = ax.barh(range(len(top)), values, color=colours)
        ax.set_yticks(range(len(top)), names)
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability (red: the class the heatmap explains)", fontsize=9)
        for bar, value in zip(bars, values, strict=True):
            inside = value > 0.8
            ax.text(value - 0.02 if inside else value + 0.02, bar.get_y() + bar.get_height() / 2, f"{value:.1%}",
                    va="center", ha="right" if inside else "left", fontsize=9,
                    color="white" if inside else "black")
        ax.set_title(f"{result.title}: top-{len(top)}", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        return _pixels(fig)


def _stages(attention: list[BlockAttention]) -> list[tuple[str, list[BlockAttention]]]:
    stages: dict[str, list[BlockAttention]] = {}
    for record in attention:
        stages.setdefault(record.stage, []).append(record)
    return list(stages.items())


def channel_weights_figure(attention: list[BlockAttention], title: str, sort: bool = True) -> np.ndarray | None:
    """Blocks x channels heat-strip of the channel attention weights, one panel per stage, colorbar 0..1.

    Stages have different channel counts (256/512/1024/2048), so each stage gets its own panel; within a
    stage, a column is one channel of the residual stream in every block. With ``sort`` the columns are
    ordered by the channel's mean weight over the stage's blocks, the same order in every row.
    Returns None when the model has no attention modules.
    """
    if not attention:
        return None
    stages = _stages(attention)
    heights = [len(blocks) for _, blocks in stages]
    with _figure(5.2, 0.24 * sum(heights) + 0.35 * len(stages) + 1.1) as fig:
        axes = fig.subplots(len(stages), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
        image = None
        for ax, (stage, blocks) in zip(axes, stages, strict=True):
            weights = np.stack([b.channel_weights for b in blocks])
            if sort:
                weights = weights[:, np.argsort(-weights.mean(axis=0), kind="stable")]
            image = ax.imshow(weights, aspect="auto", vmin=0.0, vmax=1.0, cmap=ATTENTION_COLORMAP,
                              interpolation="antialiased")
            ax.set_yticks(range(len(blocks)), [b.block for b in blocks], fontsize=8)
            channels = weights.shape[1]
            ax.set_xticks([0, channels - 1], ["1", str(channels)], fontsize=8)
            ax.set_title(f"{stage}: {channels} channels", fontsize=8, loc="left", pad=2)
        axes[-1].set_xlabel("channels, sorted by their mean weight in the stage" if sort else "channel", fontsize=9)
        fig.colorbar(image, ax=list(axes), label="channel weight (0 to 1)", shrink=0.9)
        fig.suptitle(title, fontsize=10)
        return _pixels(fig)


def spatial_maps_figure(view: np.ndarray, attention: list[BlockAttention], colormap: str = "jet",
                        opacity: float = 0.6, columns: int = 4) -> np.ndarray | None:
    """Every block's CBAM spatial map, upsampled and laid over the view, on one fixed 0..1 scale.

    Each panel is titled with its block and the map's own range. Returns None when no block has a spatial map.
    """
    _check_style(colormap, opacity)
    spatial = [record for record in attention if record.spatial_map is not None]
    if not spatial:
        return None
    rows = -(-len(spatial) // columns)
    with _figure(1.2 * columns + 0.9, 1.45 * rows + 0.5) as fig:
        axes = fig.subplots(rows, columns, squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, record in zip(axes.flat, spatial, strict=False):
            values = record.spatial_map
            ax.imshow(overlay(view, values, colormap, opacity))
            ax.set_title(f"{record.block}\n{values.min():.2f}–{values.max():.2f}", fontsize=8.5, pad=3)
        mappable = ScalarMappable(Normalize(0.0, 1.0), cmap=colormap)
        fig.colorbar(mappable, ax=axes.ravel().tolist(), label="spatial weight (0 to 1)", shrink=0.8)
        fig.suptitle("CBAM spatial attention per block (titles: block, the map's min–max)", fontsize=9.5)
        return _pixels(fig)


def _pairs(explanation: Explanation) -> list[tuple[str, str]]:
    names = list(explanation.results)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def difference_figure(explanation: Explanation, opacity: float = 0.7) -> np.ndarray | None:
    """For every pair of models, map A minus map B over the grey view, diverging colours on a fixed -1..1 scale.

    Returns None when fewer than two models were run.
    """
    pairs = _pairs(explanation)
    if not pairs:
        return None
    view = explanation.view
    background = _grey(view)
    with _figure(3.1 * len(pairs) + 1.0, 3.7) as fig:
        axes = fig.subplots(1, len(pairs), squeeze=False)[0]
        for ax, (a, b) in zip(axes, pairs, strict=True):
            size = view.shape[:2]
            difference = resize_map(explanation.results[a].heatmap, size) - resize_map(
                explanation.results[b].heatmap, size)
            ax.imshow(background)
            ax.imshow(difference, cmap=DIFFERENCE_COLORMAP, vmin=-1.0, vmax=1.0, alpha=opacity)
            ax.set_title(f"{VARIANT_TITLES[a]}\nminus {VARIANT_TITLES[b]}", fontsize=9)
            ax.set_axis_off()
        mappable = ScalarMappable(Normalize(-1.0, 1.0), cmap=DIFFERENCE_COLORMAP)
        bar = fig.colorbar(mappable, ax=list(axes), shrink=0.85, ticks=[-1, 0, 1])
        bar.ax.set_yticklabels(["-1: second\nhigher", "0: equal", "+1: first\nhigher"], fontsize=8)
        title = "Where the heatmaps differ: first model's map minus the second's"
        fig.suptitle(title if len(pairs) > 1 else title.replace(": ", ":\n"), fontsize=10)
        return _pixels(fig)


def agreement_figure(explanation: Explanation) -> np.ndarray:
    """Each model's top-20 % region outlined on the view, the pairwise IoU of those regions, and each model's time."""
    names = list(explanation.results)
    view = explanation.view
    panels = 3 if len(names) > 1 else 2
    with _figure(3.4 * panels, 3.4) as fig:
        axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1.0] * panels})
        regions, iou, timing = axes[0], (axes[1] if panels == 3 else None), axes[-1]

        regions.imshow(_grey(view))
        for name in names:
            mask = top_region_mask(resize_map(explanation.results[name].heatmap, view.shape[:2]), TOP_FRACTION)
            padded = np.pad(mask.astype(np.float32), 1)  # a region touching the border still gets a closed outline
            rows, cols = np.arange(-1, mask.shape[0] + 1), np.arange(-1, mask.shape[1] + 1)
            regions.contour(cols, rows, padded, levels=[0.5], colors=[VARIANT_COLOURS[name]], linewidths=2)
            regions.plot([], [], color=VARIANT_COLOURS[name], linewidth=2, label=VARIANT_TITLES[name])
        regions.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, ncol=1, frameon=False)
        regions.set_title(f"top {TOP_FRACTION:.0%} of each heatmap", fontsize=9)
        regions.set_axis_off()

        if iou is not None:
            matrix = np.eye(len(names))
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    key = f"{a}|{b}" if f"{a}|{b}" in explanation.agreement else f"{b}|{a}"
                    if i != j:
                        matrix[i, j] = explanation.agreement[key]
            iou.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Greens")
            for i in range(len(names)):
                for j in range(len(names)):
                    iou.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=10,
                             color="white" if matrix[i, j] > 0.6 else "black")
            labels = [VARIANT_TITLES[n].replace("ResNet50 + ", "+") for n in names]
            iou.set_xticks(range(len(names)), labels, fontsize=8)
            iou.set_yticks(range(len(names)), labels, fontsize=8)
            iou.set_title(f"IoU of the top-{TOP_FRACTION:.0%} regions\n(1 = same region, 0 = disjoint)", fontsize=9)

        seconds = [explanation.results[n].seconds for n in names]
        timing.barh(range(len(names)), seconds, color=[VARIANT_COLOURS[n] for n in names])
        timing.set_yticks(range(len(names)), [VARIANT_TITLES[n] for n in names], fontsize=8)
        timing.invert_yaxis()
        for i, value in enumerate(seconds):
            timing.text(value, i, f" {value:.2f} s", va="center", fontsize=8)
        timing.set_xlim(0, max(seconds) * 1.35 if max(seconds) > 0 else 1)
        timing.set_xlabel("seconds (forward + CAM)", fontsize=8)
        timing.set_title("time per model", fontsize=9)
        timing.spines[["top", "right"]].set_visible(False)
        return _pixels(fig)


# --------------------------------------------------------------------------- everything for one request


@dataclass
class RenderedModel:
    overlay: np.ndarray
    topk: np.ndarray
    channel_weights: np.ndarray | None  # None for the plain ResNet50
    spatial_maps: np.ndarray | None  # CBAM only


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
            if model.channel_weights is not None:
                out[f"{variant}_channel_weights.png"] = model.channel_weights
            if model.spatial_maps is not None:
                out[f"{variant}_spatial_maps.png"] = model.spatial_maps
        if self.difference is not None:
            out["difference_maps.png"] = self.difference
        out["agreement.png"] = self.agreement
        return out


def render_explanation(explanation: Explanation, colormap: str = "jet", opacity: float = 0.5) -> Rendered:
    """All the pictures the app shows for one explanation."""
    _check_style(colormap, opacity)
    view = explanation.view
    models = {}
    for variant, result in explanation.results.items():
        models[variant] = RenderedModel(
            overlay=overlay(view, result.heatmap, colormap, opacity),
            topk=topk_chart(result),
            channel_weights=channel_weights_figure(
                result.attention, f"{result.title}: channel attention weights per block"),
            spatial_maps=spatial_maps_figure(view, result.attention, colormap),
        )
    return Rendered(view=view, models=models, difference=difference_figure(explanation),
                    agreement=agreement_figure(explanation), colormap=colormap, opacity=opacity)


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

    heatmaps.npz holds ``view`` and, per model, ``<variant>`` (the CAM) and ``<variant>_probabilities``;
    attention.npz holds ``<variant>/<block>/channel_weights`` and, for CBAM, ``<variant>/<block>/spatial_map``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heatmaps: dict[str, np.ndarray] = {"view": explanation.view}
    attention: dict[str, np.ndarray] = {}
    for variant, result in explanation.results.items():
        heatmaps[variant] = result.heatmap
        heatmaps[f"{variant}_probabilities"] = result.probabilities
        for record in result.attention:
            attention[f"{variant}/{record.block}/channel_weights"] = record.channel_weights
            if record.spatial_map is not None:
                attention[f"{variant}/{record.block}/spatial_map"] = record.spatial_map
    images = rendered.images()
    summary = explanation.summary()
    summary["classes"] = list(explanation.classes)
    summary["render"] = {"colormap": rendered.colormap, "opacity": rendered.opacity}
    summary["files"] = [*images, "heatmaps.npz", *(["attention.npz"] if attention else []), "summary.json"]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, image in images.items():
            archive.writestr(name, _png(image))
        archive.writestr("heatmaps.npz", _npz(heatmaps))
        if attention:
            archive.writestr("attention.npz", _npz(attention))
        archive.writestr("summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    return path
