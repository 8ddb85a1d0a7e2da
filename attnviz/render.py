"""Results to pictures: CAM overlays, top-k charts, attention figures, comparisons, and the export zip.

Everything here takes the plain data of an ``Explanation`` and returns uint8
RGB arrays; nothing is computed about the models. Figures are matplotlib
``Figure`` objects drawn on the Agg canvas without pyplot, so no figure is
registered globally. The app's figures are drawn from templates, one per
layout, that keep their fixed parts drawn (see "figures" below); drawing is
serialised by one lock, so concurrent requests never share a half-drawn
figure.

    rendered = render_explanation(explanation, colormap="jet", opacity=0.5)
    rendered.models["cbam"].overlay          # (H, W, 3) uint8
    export_zip(explanation, rendered, "attnviz.zip")
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from attnviz.attention import RECORD_KINDS, families, family
from attnviz.errors import AttnvizError
from attnviz.results import BlockAttention, Explanation, ModelResult, top_region_mask

COLORMAPS = ("jet", "turbo", "inferno", "magma", "viridis", "plasma", "hot", "gray")
DIFFERENCE_COLORMAP = "RdBu_r"
ATTENTION_COLORMAP = "viridis"
TOP_FRACTION = 0.2  # the agreement figure compares each map's top 20 % of pixels
VARIANT_COLOURS = {f.key: f.colour for f in families()}
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
        raise AttnvizError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}", code="choice")
    if not 0.0 <= opacity <= 1.0:
        raise AttnvizError(f"opacity must be between 0 and 1, not {opacity}", code="choice")


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


def difference_overlay(view: np.ndarray, first: np.ndarray, second: np.ndarray, opacity: float = 0.7) -> np.ndarray:
    """``second`` minus ``first`` (two maps in [0, 1]) in diverging colours on a fixed -1..1 scale (blue: lower,
    red: higher), laid over the grey view: (H, W, 3) uint8, no colorbar."""
    size = view.shape[:2]
    difference = resize_map(second, size) - resize_map(first, size)
    coloured = colorize(difference, DIFFERENCE_COLORMAP, -1.0, 1.0).astype(np.float32)
    blended = (1.0 - opacity) * _grey(view).astype(np.float32) + opacity * coloured
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _grey(view: np.ndarray) -> np.ndarray:
    """The view in grey, lightened, as a quiet background for comparison maps."""
    grey = view.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = 0.35 * 255.0 + 0.65 * grey
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


# --------------------------------------------------------------------------- figures
#
# Matplotlib spends most of a figure's draw on layout and text, and the app's figures have a layout that the
# request cannot change: the blocks of a model, the models compared, the view's size, the colormap. So each
# layout is built once as a template: its fixed parts (axes, ticks, labels, colorbars) are drawn and kept as a
# background, and the parts that show the request's data (images, contours, bars, numbers) are animated
# artists, left out of that draw. A request restores the background and draws only those artists (blitting):
# about a tenth of the time of a full draw, the same pixels (tested against a full draw with ``BLIT = False``).

BLIT = True
MAX_TEMPLATES = 32  # layouts kept (each holds a figure and a background of about 1-2 MB)


@dataclass
class _Template:
    """A figure drawn once without its animated artists, and that drawing kept as the background."""

    figure: Figure
    parts: dict
    canvas: FigureCanvasAgg
    background: object


_TEMPLATES: OrderedDict[tuple, _Template] = OrderedDict()

Build = Callable[[Figure], dict]
Update = Callable[[dict], tuple[list[Artist], list[Artist]]]  # -> artists to draw, artists to remove afterwards


def _animated(parts: dict) -> Iterator[Artist]:
    for value in parts.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Artist):
                yield item


def _new_figure(size: tuple[float, float], build: Build) -> tuple[Figure, dict, FigureCanvasAgg]:
    """Build a figure, lay it out once (constrained layout) and freeze that layout."""
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    parts = build(figure)
    animated = list(_animated(parts))
    # The frames of axes that show data go with the data: drawn once more over the background, their
    # antialiased edges would come out darker than in a full draw.
    animated += [spine for ax in {a.axes for a in animated if a.axes is not None} for spine in _frame(ax)]
    for artist in animated:
        artist.set_animated(True)
    canvas.draw()
    figure.set_layout_engine("none")  # the positions stay as laid out, whatever the data drawn later
    return figure, parts, canvas


def _draw(key: tuple, size: tuple[float, float], build: Build, update: Update) -> np.ndarray:
    """The pixels of the figure of layout ``key`` with the request's data, from its template when there is one.

    ``build(figure)`` makes the fixed parts and returns the artists that show data (``parts``; every Artist in
    it is animated); ``update(parts)`` puts the request's data into them and returns the artists to draw, in
    drawing order, and those it made only for this request.
    """
    with _DRAW_LOCK:
        if not BLIT:  # a full draw of a fresh figure: the reference the templates are tested against
            figure, parts, canvas = _new_figure(size, build)
            try:
                draw, temporary = update(parts)
                for artist in [*_animated(parts), *draw, *temporary]:
                    artist.set_animated(False)
                canvas.draw()
                return np.asarray(canvas.buffer_rgba())[..., :3].copy()
            finally:
                figure.clear()
        template = _TEMPLATES.get(key)
        if template is None:
            figure, parts, canvas = _new_figure(size, build)
            template = _Template(figure, parts, canvas, canvas.copy_from_bbox(figure.bbox))
            _TEMPLATES[key] = template
            while len(_TEMPLATES) > MAX_TEMPLATES:
                _TEMPLATES.popitem(last=False)[1].figure.clear()
        _TEMPLATES.move_to_end(key)
        draw, temporary = update(template.parts)
        try:
            template.canvas.restore_region(template.background)
            for artist in draw:
                template.figure.draw_artist(artist)
            return np.asarray(template.canvas.buffer_rgba())[..., :3].copy()
        finally:
            for artist in temporary:
                artist.remove()


def clear_templates() -> None:
    """Forget every figure template (they are rebuilt on the next request)."""
    with _DRAW_LOCK:
        while _TEMPLATES:
            _TEMPLATES.popitem()[1].figure.clear()


def _frame(ax) -> list[Artist]:
    """An axes' visible spines: a full draw puts them over images and bars (zorder 2.5), so a template draws
    them with the data, after it."""
    return [spine for spine in ax.spines.values() if spine.get_visible()]


def topk_chart(result: ModelResult) -> np.ndarray:
    """Horizontal bars of the top-k probabilities, the explained class in a stronger colour.

    Drawn in full (class names differ from image to image): the page shows the top-k as a label component, so
    only exports and reports draw this chart.
    """
    top = result.top
    figure = Figure(figsize=(4.6, 0.42 * len(top) + 0.9), dpi=DPI, layout="constrained")
    try:
        ax = figure.add_subplot()
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
        canvas = FigureCanvasAgg(figure)
        with _DRAW_LOCK:
            canvas.draw()
            return np.asarray(canvas.buffer_rgba())[..., :3].copy()
    finally:
        figure.clear()


def _stages(attention: list[BlockAttention]) -> list[tuple[str, list[BlockAttention]]]:
    stages: dict[str, list[BlockAttention]] = {}
    for record in attention:
        stages.setdefault(record.stage, []).append(record)
    return list(stages.items())


def channel_weights_figure(attention: list[BlockAttention], title: str, sort: bool = True) -> np.ndarray | None:
    """Blocks x channels heat-strip of the channel records (kind "channel"), one panel per stage, colorbar 0..1.

    Stages have different channel counts (256/512/1024/2048), so each stage gets its own panel; within a
    stage, a column is one channel of the residual stream in every block. With ``sort`` the columns are
    ordered by the channel's mean weight over the stage's blocks, the same order in every row.
    Returns None when no block has a channel record.
    """
    attention = [record for record in attention if record.channel_weights is not None]
    if not attention:
        return None
    stages = _stages(attention)
    layout = tuple((stage, tuple(b.block for b in blocks), len(blocks[0].channel_weights)) for stage, blocks in stages)
    heights = [len(blocks) for _, blocks in stages]

    def build(fig: Figure) -> dict:
        axes = fig.subplots(len(stages), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
        images = []
        for ax, (stage, names, channels) in zip(axes, layout, strict=True):
            images.append(ax.imshow(np.zeros((len(names), channels), np.float32), aspect="auto", vmin=0.0,
                                    vmax=1.0, cmap=ATTENTION_COLORMAP, interpolation="antialiased"))
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ax.set_xticks([0, channels - 1], ["1", str(channels)], fontsize=8)
            ax.set_title(f"{stage}: {channels} channels", fontsize=8, loc="left", pad=2)
        axes[-1].set_xlabel("channels, sorted by their mean weight in the stage" if sort else "channel", fontsize=9)
        fig.colorbar(images[-1], ax=list(axes), label="channel weight (0 to 1)", shrink=0.9)
        fig.suptitle(title, fontsize=10)
        return {"images": images}

    def update(parts: dict) -> tuple[list[Artist], list[Artist]]:
        draw = []
        for image, (_, blocks) in zip(parts["images"], stages, strict=True):
            weights = np.stack([b.channel_weights for b in blocks]).astype(np.float32)
            if sort:
                weights = weights[:, np.argsort(-weights.mean(axis=0), kind="stable")]
            image.set_data(weights)
            draw += [image, *_frame(image.axes)]
        return draw, []

    size = (5.2, 0.24 * sum(heights) + 0.35 * len(stages) + 1.1)
    return _draw(("channel", title, sort, layout), size, build, update)


def spatial_maps_figure(view: np.ndarray, attention: list[BlockAttention], colormap: str = "jet",
                        opacity: float = 0.6, columns: int = 4, title: str = "spatial attention") -> np.ndarray | None:
    """Every block's spatial record (kind "spatial"), upsampled and laid over the view, on one fixed 0..1 scale.

    Each panel is titled with its block and the map's own range. Returns None when no block has a spatial map.
    """
    _check_style(colormap, opacity)
    spatial = [record for record in attention if record.spatial_map is not None]
    if not spatial:
        return None
    rows = -(-len(spatial) // columns)
    blocks = tuple(record.block for record in spatial)

    def build(fig: Figure) -> dict:
        axes = fig.subplots(rows, columns, squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        images, titles = [], []
        for ax, block in zip(axes.flat, blocks, strict=False):
            images.append(ax.imshow(np.zeros(view.shape, np.uint8)))
            titles.append(ax.set_title(f"{block}\n0.00–0.00", fontsize=8.5, pad=3))
        mappable = ScalarMappable(Normalize(0.0, 1.0), cmap=colormap)
        fig.colorbar(mappable, ax=axes.ravel().tolist(), label="spatial weight (0 to 1)", shrink=0.8)
        fig.suptitle(f"{title} per block (titles: block, the map's min–max)", fontsize=9.5)
        return {"images": images, "titles": titles}

    def update(parts: dict) -> tuple[list[Artist], list[Artist]]:
        draw = []
        for image, title, record in zip(parts["images"], parts["titles"], spatial, strict=True):
            values = record.spatial_map
            image.set_data(overlay(view, values, colormap, opacity))
            title.set_text(f"{record.block}\n{values.min():.2f}–{values.max():.2f}")
            draw += [image, title]
        return draw, []

    size = (1.2 * columns + 0.9, 1.45 * rows + 0.5)
    return _draw(("spatial", view.shape, blocks, colormap, columns, title), size, build, update)


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
    size = view.shape[:2]

    def build(fig: Figure) -> dict:
        axes = fig.subplots(1, len(pairs), squeeze=False)[0]
        backgrounds, differences = [], []
        for ax, (a, b) in zip(axes, pairs, strict=True):
            backgrounds.append(ax.imshow(np.zeros(view.shape, np.uint8)))
            differences.append(ax.imshow(np.zeros(size, np.float32), cmap=DIFFERENCE_COLORMAP, vmin=-1.0,
                                         vmax=1.0))
            ax.set_title(f"{family(a).title}\nminus {family(b).title}", fontsize=9)
            ax.set_axis_off()
        mappable = ScalarMappable(Normalize(-1.0, 1.0), cmap=DIFFERENCE_COLORMAP)
        bar = fig.colorbar(mappable, ax=list(axes), shrink=0.85, ticks=[-1, 0, 1])
        bar.ax.set_yticklabels(["-1: second\nhigher", "0: equal", "+1: first\nhigher"], fontsize=8)
        title = "Where the heatmaps differ: first model's map minus the second's"
        fig.suptitle(title if len(pairs) > 1 else title.replace(": ", ":\n"), fontsize=10)
        return {"backgrounds": backgrounds, "differences": differences}

    def update(parts: dict) -> tuple[list[Artist], list[Artist]]:
        background = _grey(view)
        draw = []
        for grey, shown, (a, b) in zip(parts["backgrounds"], parts["differences"], pairs, strict=True):
            grey.set_data(background)
            shown.set_data(resize_map(explanation.results[a].heatmap, size)
                           - resize_map(explanation.results[b].heatmap, size))
            shown.set_alpha(opacity)
            draw += [grey, shown]
        return draw, []

    return _draw(("difference", view.shape, tuple(pairs)), (3.1 * len(pairs) + 1.0, 3.7), build, update)


def agreement_figure(explanation: Explanation) -> np.ndarray:
    """Each model's top-20 % region outlined on the view, the pairwise IoU of those regions, and each model's time."""
    names = list(explanation.results)
    view = explanation.view
    panels = 3 if len(names) > 1 else 2
    labels = [family(n).short for n in names]

    def build(fig: Figure) -> dict:
        axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1.0] * panels})
        regions, iou, timing = axes[0], (axes[1] if panels == 3 else None), axes[-1]
        # the axes in a tuple: it is not one of the animated artists, it stays in the background
        parts: dict = {"background": regions.imshow(np.zeros(view.shape, np.uint8)), "regions_axes": (regions,)}
        regions.set_xlim(-0.5, view.shape[1] - 0.5)
        regions.set_ylim(view.shape[0] - 0.5, -0.5)
        regions.set_autoscale_on(False)  # the outlines drawn later must not move the limits
        for name in names:
            regions.plot([], [], color=VARIANT_COLOURS[name], linewidth=2, label=family(name).title)
        regions.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, ncol=1, frameon=False)
        regions.set_title(f"top {TOP_FRACTION:.0%} of each heatmap", fontsize=9)
        regions.set_axis_off()

        if iou is not None:
            parts["matrix"] = iou.imshow(np.eye(len(names)), vmin=0.0, vmax=1.0, cmap="Greens")
            parts["cells"] = [iou.text(j, i, "0.00", ha="center", va="center", fontsize=10)
                              for i in range(len(names)) for j in range(len(names))]
            iou.set_xticks(range(len(names)), labels, fontsize=8)
            iou.set_yticks(range(len(names)), labels, fontsize=8)
            iou.set_title(f"IoU of the top-{TOP_FRACTION:.0%} regions\n(1 = same region, 0 = disjoint)", fontsize=9)

        # Bars scaled to the slowest model, so that the axis needs no ticks that change with the times.
        parts["bars"] = list(timing.barh(range(len(names)), [1.0] * len(names),
                                         color=[VARIANT_COLOURS[n] for n in names]))
        parts["times"] = [timing.text(1.0, i, " 0.00 s", va="center", fontsize=8) for i in range(len(names))]
        timing.set_yticks(range(len(names)), [family(n).title for n in names], fontsize=8)
        timing.invert_yaxis()
        timing.set_xlim(0, 1.35)
        timing.set_xticks([])
        timing.set_xlabel("seconds (forward + CAM)", fontsize=8)
        timing.set_title("time per model", fontsize=9)
        timing.spines[["top", "right"]].set_visible(False)
        return parts

    def update(parts: dict) -> tuple[list[Artist], list[Artist]]:
        size = view.shape[:2]
        parts["background"].set_data(_grey(view))
        draw: list[Artist] = [parts["background"]]
        temporary = []
        (regions,) = parts["regions_axes"]
        for name in names:
            mask = top_region_mask(resize_map(explanation.results[name].heatmap, size), TOP_FRACTION)
            padded = np.pad(mask.astype(np.float32), 1)  # a region touching the border still gets a closed outline
            rows, cols = np.arange(-1, size[0] + 1), np.arange(-1, size[1] + 1)
            outline = regions.contour(cols, rows, padded, levels=[0.5], colors=[VARIANT_COLOURS[name]], linewidths=2)
            outline.set_animated(True)
            temporary.append(outline)
        draw += temporary
        if "matrix" in parts:
            matrix = np.eye(len(names))
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    key = f"{a}|{b}" if f"{a}|{b}" in explanation.agreement else f"{b}|{a}"
                    if i != j:
                        matrix[i, j] = explanation.agreement[key]
            parts["matrix"].set_data(matrix)
            for cell, value in zip(parts["cells"], matrix.ravel(), strict=True):
                cell.set_text(f"{value:.2f}")
                cell.set_color("white" if value > 0.6 else "black")
            draw += [parts["matrix"], *_frame(parts["matrix"].axes), *parts["cells"]]
        seconds = [explanation.results[n].seconds for n in names]
        slowest = max(max(seconds), 1e-9)
        for bar, text, value in zip(parts["bars"], parts["times"], seconds, strict=True):
            bar.set_width(value / slowest)
            text.set_x(value / slowest)
            text.set_text(f" {value:.2f} s")
        draw += [*parts["bars"], *_frame(parts["bars"][0].axes), *parts["times"]]
        return draw, temporary

    return _draw(("agreement", view.shape, tuple(names)), (3.4 * panels, 3.4), build, update)


def excitation_figure(profile: dict, weights: np.ndarray, title: str, highlight: str | None = None,
                      shown_classes: int = 4) -> np.ndarray:
    """The SE paper's excitation figure for one block, with this image's own channel weights drawn over it.

    ``profile`` is one block's entry of the analysis' excitation profiles: ``{"classes": {name: [mean weight of
    each of the first channels]}, "all": [...]}``; ``weights`` is this image's channel record of that block (its
    first channels are drawn). ``highlight`` (the class the image was taken for) is drawn first and thicker.
    """
    names = list(profile["classes"])
    chosen = ([highlight] if highlight in names else []) + [n for n in names if n != highlight]
    chosen = chosen[:shown_classes]
    channels = len(profile["all"])
    xs = np.arange(channels)

    def build(fig: Figure) -> dict:
        ax = fig.subplots()
        palette = colormaps["tab10"]
        for i, name in enumerate(chosen):
            ax.plot(xs, profile["classes"][name], lw=2.2 if name == highlight else 1.1, color=palette(i),
                    label=f"mean of class {name}")
        ax.plot(xs, profile["all"], lw=1.2, ls="--", color="0.4", label="mean of every class")
        (line,) = ax.plot(xs, np.zeros(channels), lw=2.0, color="black", label="this image", animated=True)
        ax.set_xlim(-0.5, channels - 0.5)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"channel (the first {channels})", fontsize=9)
        ax.set_ylabel("excitation (channel weight)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
        ax.set_title(title, fontsize=10)
        return {"line": line}

    def update(parts: dict) -> tuple[list[Artist], list[Artist]]:
        parts["line"].set_ydata(np.asarray(weights, np.float32)[:channels])
        return [parts["line"]], []

    key = ("excitation", title, tuple(chosen), tuple(map(tuple, (profile["classes"][n] for n in chosen))))
    return _draw(key, (6.4, 3.9), build, update)


# --------------------------------------------------------------------------- everything for one request


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


def render_explanation(explanation: Explanation, colormap: str = "jet", opacity: float = 0.5) -> Rendered:
    """All the pictures the app shows for one explanation (the top-k charts are drawn when first used)."""
    _check_style(colormap, opacity)
    view = explanation.view
    models = {}
    for variant, result in explanation.results.items():
        knocked = result.knockout if result.knockout is not None and result.knockout.affected else None
        models[variant] = RenderedModel(
            result=result,
            overlay=overlay(view, result.heatmap, colormap, opacity),
            figures=attention_figures(view, result, colormap),
            knockout_overlay=None if knocked is None else overlay(view, knocked.heatmap, colormap, opacity),
            knockout_difference=None if knocked is None else difference_overlay(view, result.heatmap,
                                                                               knocked.heatmap),
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
