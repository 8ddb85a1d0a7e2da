"""Figures that compare the models of one explanation: where their heatmaps differ, and where they agree."""

from __future__ import annotations

import numpy as np
from matplotlib.artist import Artist
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from attnviz.attention import families, family
from attnviz.render.pixels import (
    DIFFERENCE_COLORMAP,
    blend,
    colorize,
    colour_rgb,
    grey,
    outline,
    resize_map,
    resize_rgb,
)
from attnviz.render.templates import Canvas, draw, frame
from attnviz.results import Explanation, top_region_mask

TOP_FRACTION = 0.2  # the agreement figure compares each map's top 20 % of pixels
VARIANT_COLOURS = {f.key: f.colour for f in families()}
IOU_COLORMAP = "Greens"


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
        background = grey(view)
        drawn = []
        for under, shown, (a, b) in zip(parts["backgrounds"], parts["differences"], pairs, strict=True):
            under.set_data(background)
            shown.set_data(resize_map(explanation.results[a].heatmap, size)
                           - resize_map(explanation.results[b].heatmap, size))
            shown.set_alpha(opacity)
            drawn += [under, shown]
        return drawn, []

    def paint(parts: dict, canvas: Canvas) -> None:
        sized: dict[tuple[int, int], tuple] = {}  # panel size -> grey view and every map at that size, made once
        for under, (a, b) in zip(parts["backgrounds"], pairs, strict=True):
            box = canvas.box(under)
            if box.size not in sized:
                sized[box.size] = (grey(resize_rgb(view, box.size)),
                                   {name: resize_map(r.heatmap, box.size) for name, r in explanation.results.items()})
            background, maps = sized[box.size]
            difference = colorize(maps[a] - maps[b], DIFFERENCE_COLORMAP, -1.0, 1.0)
            canvas.paste(box, blend(background, difference, opacity))

    return draw(("difference", view.shape, tuple(pairs)), (3.1 * len(pairs) + 1.0, 3.7), build, update, paint)


def _iou_matrix(explanation: Explanation, names: list[str]) -> np.ndarray:
    matrix = np.eye(len(names))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            key = f"{a}|{b}" if f"{a}|{b}" in explanation.agreement else f"{b}|{a}"
            if i != j:
                matrix[i, j] = explanation.agreement[key]
    return matrix


def agreement_figure(explanation: Explanation) -> np.ndarray:
    """Each model's top-20 % region outlined on the view, the pairwise IoU of those regions, and each model's time."""
    names = list(explanation.results)
    view = explanation.view
    panels = 3 if len(names) > 1 else 2
    seconds = [explanation.results[n].seconds for n in names]
    slowest = max(max(seconds), 1e-9)

    def build(fig: Figure) -> dict:
        return _agreement_layout(fig, names, view.shape, panels)

    def update(parts: dict) -> tuple[list[Artist], list[Artist]]:
        size = view.shape[:2]
        parts["background"].set_data(grey(view))
        drawn: list[Artist] = [parts["background"]]
        temporary = []
        (regions,) = parts["regions_axes"]
        for name in names:
            mask = top_region_mask(resize_map(explanation.results[name].heatmap, size), TOP_FRACTION)
            padded = np.pad(mask.astype(np.float32), 1)  # a region touching the border still gets a closed outline
            rows, cols = np.arange(-1, size[0] + 1), np.arange(-1, size[1] + 1)
            line = regions.contour(cols, rows, padded, levels=[0.5], colors=[VARIANT_COLOURS[name]], linewidths=2)
            line.set_animated(True)
            temporary.append(line)
        drawn += temporary
        if "matrix" in parts:
            matrix = _iou_matrix(explanation, names)
            parts["matrix"].set_data(matrix)
            for cell, value in zip(parts["cells"], matrix.ravel(), strict=True):
                cell.set_text(f"{value:.2f}")
                cell.set_color("white" if value > 0.6 else "black")
            drawn += [parts["matrix"], *frame(parts["matrix"].axes), *parts["cells"]]
        for bar, text, value in zip(parts["bars"], parts["times"], seconds, strict=True):
            bar.set_width(value / slowest)
            text.set_x(value / slowest)
            text.set_text(f" {value:.2f} s")
        drawn += [*parts["bars"], *frame(parts["bars"][0].axes), *parts["times"]]
        return drawn, temporary

    def paint(parts: dict, canvas: Canvas) -> None:
        box = canvas.box(parts["background"])
        regions = grey(resize_rgb(view, box.size))
        for name in names:
            mask = top_region_mask(resize_map(explanation.results[name].heatmap, box.size), TOP_FRACTION)
            regions[outline(mask)] = colour_rgb(VARIANT_COLOURS[name])
        canvas.paste(box, regions)
        if "matrix" in parts:
            matrix = _iou_matrix(explanation, names)
            cells = canvas.box(parts["matrix"], inset=1).split(len(names), len(names))
            colours = colorize(matrix, IOU_COLORMAP)
            for (i, j), value in np.ndenumerate(matrix):
                canvas.fill(cells[i][j], colours[i, j])
                canvas.text(parts["cells"][i * len(names) + j], f"{value:.2f}", "white" if value > 0.6 else "black")
        timing = parts["bars"][0].axes
        for i, (bar, text, value) in enumerate(zip(parts["bars"], parts["times"], seconds, strict=True)):
            width = value / slowest
            height = bar.get_height()
            shown = canvas.data_box(timing, 0.0, i - height / 2, width, i + height / 2)
            shown.left += 1  # the left spine stays over the bar, as in a full draw
            canvas.fill(shown, colour_rgb(VARIANT_COLOURS[names[i]]))
            text.set_x(width)
            canvas.text(text, f" {value:.2f} s")

    return draw(("agreement", view.shape, tuple(names)), (3.4 * panels, 3.4), build, update, paint)


def _agreement_layout(fig: Figure, names: list[str], shape: tuple, panels: int) -> dict:
    """The agreement figure's fixed parts, and the artists that show a request's data."""
    labels = [family(n).short for n in names]
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1.0] * panels})
    regions, iou, timing = axes[0], (axes[1] if panels == 3 else None), axes[-1]
    # the axes in a tuple: it is not one of the data artists, it stays in the template's drawing
    parts: dict = {"background": regions.imshow(np.zeros(shape, np.uint8)), "regions_axes": (regions,)}
    regions.set_xlim(-0.5, shape[1] - 0.5)
    regions.set_ylim(shape[0] - 0.5, -0.5)
    regions.set_autoscale_on(False)  # the outlines drawn later must not move the limits
    for name in names:
        regions.plot([], [], color=VARIANT_COLOURS[name], linewidth=2, label=family(name).title)
    regions.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, ncol=1, frameon=False)
    regions.set_title(f"top {TOP_FRACTION:.0%} of each heatmap", fontsize=9)
    regions.set_axis_off()

    if iou is not None:
        parts["matrix"] = iou.imshow(np.eye(len(names)), vmin=0.0, vmax=1.0, cmap=IOU_COLORMAP)
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
