"""Figures of one model: its top-k chart, its channel weights per block, its spatial maps per block, and the
excitation of one block against the set's class means."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from attnviz.render.pixels import ATTENTION_COLORMAP, check_style, colorize, overlay, resize_rgb, strip
from attnviz.render.templates import DPI, DRAW_LOCK, Canvas, draw, frame
from attnviz.results import BlockAttention, ModelResult


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
        with DRAW_LOCK:
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
    ordered by the channel's mean weight over the stage's blocks, the same order in every row. A pixel column
    shows the mean of the channels it covers. Returns None when no block has a channel record.
    """
    attention = [record for record in attention if record.channel_weights is not None]
    if not attention:
        return None
    stages = _stages(attention)
    layout = tuple((stage, tuple(b.block for b in blocks), len(blocks[0].channel_weights)) for stage, blocks in stages)
    heights = [len(blocks) for _, blocks in stages]

    def weights_of(blocks: list[BlockAttention]) -> np.ndarray:
        weights = np.stack([b.channel_weights for b in blocks]).astype(np.float32)
        return weights[:, np.argsort(-weights.mean(axis=0), kind="stable")] if sort else weights

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
        # the title is the request's (each model's): one line of its font holds the layout's place for it, so
        # that every model with these blocks shares one template
        return {"images": images, "title": fig.suptitle("ResNet50: channel weights", fontsize=10)}

    def update(parts: dict) -> tuple[list[Artist], list[Artist]]:
        parts["title"].set_text(title)
        drawn = [parts["title"]]
        for image, (_, blocks) in zip(parts["images"], stages, strict=True):
            image.set_data(weights_of(blocks))
            drawn += [image, *frame(image.axes)]
        return drawn, []

    def paint(parts: dict, canvas: Canvas) -> None:
        canvas.text(parts["title"], title)
        for image, (_, blocks) in zip(parts["images"], stages, strict=True):
            box = canvas.box(image, inset=1)  # inside the axes' frame
            canvas.paste(box, colorize(strip(weights_of(blocks), box.size), ATTENTION_COLORMAP))

    size = (5.2, 0.24 * sum(heights) + 0.35 * len(stages) + 1.1)
    return draw(("channel", sort, layout), size, build, update, paint)


GRID_GAP = 0.1  # the spatial grid: the gap between panels, in panel widths
GRID_TITLE = 0.42  # the room above each panel for its two title lines, in panel heights


def spatial_maps_figure(view: np.ndarray, attention: list[BlockAttention], colormap: str = "jet",
                        opacity: float = 0.6, columns: int = 4, title: str = "spatial attention") -> np.ndarray | None:
    """Every block's spatial record (kind "spatial"), upsampled and laid over the view, on one fixed 0..1 scale.

    Each panel is titled with its block and, under it, the map's own range. Returns None when no block has a
    spatial map.
    """
    check_style(colormap, opacity)
    spatial = [record for record in attention if record.spatial_map is not None]
    if not spatial:
        return None
    rows = -(-len(spatial) // columns)
    blocks = tuple(record.block for record in spatial)

    def build(fig: Figure) -> dict:
        # One axes holds the whole grid (panel (i, j) spans x in [j * STEP, j * STEP + 1], y likewise, downwards):
        # laying out one axes costs a tenth of sixteen, and the panels and their titles sit where they did.
        ax = fig.add_subplot()
        ax.set_axis_off()
        height = view.shape[0] / view.shape[1]
        step_x, step_y = 1 + GRID_GAP, height * (1 + GRID_TITLE)
        images, ranges = [], []
        for i, block in enumerate(blocks):
            left, top = (i % columns) * step_x, (i // columns) * step_y + height * GRID_TITLE
            images.append(ax.imshow(np.zeros(view.shape, np.uint8), extent=(left, left + 1, top + height, top)))
            centre = left + 0.5
            ax.text(centre, top, block, fontsize=8.5, ha="center", va="bottom",
                    transform=offset_copy(ax.transData, fig=fig, y=15.5, units="points"))
            ranges.append(ax.text(centre, top, "0.00–0.00", fontsize=8.5, ha="center", va="bottom",
                                  transform=offset_copy(ax.transData, fig=fig, y=2.5, units="points")))
        ax.set_xlim(-GRID_GAP / 2, columns * step_x - GRID_GAP / 2)
        ax.set_ylim(rows * step_y, 0)
        ax.set_aspect("equal")
        mappable = ScalarMappable(Normalize(0.0, 1.0), cmap=colormap)
        fig.colorbar(mappable, ax=ax, label="spatial weight (0 to 1)", shrink=0.8)
        fig.suptitle(f"{title} per block (titles: block, the map's min–max)", fontsize=9.5)
        return {"images": images, "ranges": ranges}

    def update(parts: dict) -> tuple[list[Artist], list[Artist]]:
        drawn = []
        for image, shown, record in zip(parts["images"], parts["ranges"], spatial, strict=True):
            image.set_data(overlay(view, record.spatial_map, colormap, opacity))
            shown.set_text(_range(record.spatial_map))
            drawn += [image, shown]
        return drawn, []

    def paint(parts: dict, canvas: Canvas) -> None:
        views: dict[tuple[int, int], np.ndarray] = {}  # the view at each panel size, resized once
        for image, shown, record in zip(parts["images"], parts["ranges"], spatial, strict=True):
            box = canvas.box(image)
            if box.size not in views:
                views[box.size] = resize_rgb(view, box.size)
            canvas.paste(box, overlay(views[box.size], record.spatial_map, colormap, opacity))
            canvas.text(shown, _range(record.spatial_map))

    size = (1.2 * columns + 0.9, 1.45 * rows + 0.5)
    return draw(("spatial", view.shape, blocks, colormap, columns, title), size, build, update, paint)


def _range(values: np.ndarray) -> str:
    return f"{values.min():.2f}–{values.max():.2f}"


def excitation_figure(profile: dict, weights: np.ndarray, title: str, highlight: str | None = None,
                      shown_classes: int = 4) -> np.ndarray:
    """The SE paper's excitation figure for one block, with this image's own channel weights drawn over it.

    ``profile`` is one block's entry of the analysis' excitation profiles: ``{"classes": {name: [mean weight of
    each of the first channels]}, "all": [...]}``; ``weights`` is this image's channel record of that block (its
    first channels are drawn). ``highlight`` (the class the image was taken for) is drawn first and thicker.
    A line plot: blitted from its template (matplotlib draws the line).
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
    return draw(key, (6.4, 3.9), build, update)

