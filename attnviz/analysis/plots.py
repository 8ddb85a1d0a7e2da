"""The analysis report's plots, each drawn for the width at which the app's Analysis tab shows it.

The tab shows two plots per row; at a 1280 px wide window each is 598 px wide on the page (measured in
Chromium). Every plot is drawn for that width: the same figure width for all, text sizes chosen so that no text
is under 10 px there, and twice as many pixels in the PNG so that it stays sharp on high-density screens and
in full screen. Panels are stacked rather than squeezed side by side where their labels need the width.

    draw_plot("localisation", read_result(folder), folder / "localisation.png")
"""

from __future__ import annotations

import io
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import numpy as np
from PIL import Image

from attnviz.analysis.config import (
    BASELINE,
    LOCALISATION,
    METRICS,
    PROFILE_CHANNELS,
    PROFILE_CLASSES,
    SECTIONS,
    CamConfig,
    sample_words,
    split_n,
)
from attnviz.attention import family
from attnviz.metrics import curve_auc
from attnviz.models import TARGET_LAYERS

DISPLAY_WIDTH_PX = 598  # a plot's width on the Analysis tab at a 1280 px wide window (Chromium, gradio 6)
PIXEL_SCALE = 2  # PNG pixels per pixel on the page
DPI = 100  # points to pixels on the page: a text of s pt is s * DPI / 72 px there
MIN_TEXT_PX = 10  # no text smaller than this on the page
MIN_FONT_PT = MIN_TEXT_PX * 72 / DPI
WIDTH_IN = DISPLAY_WIDTH_PX / DPI
FONT_SIZES = {  # points; the smallest, 8 pt, is 11 px on the page
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 9.5,
}


def _figure(height: float, nrows: int = 1, ncols: int = 1, **kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _save(fig, path: Path) -> None:
    """PNG with an adaptive 256-colour palette: the plots' flat colours survive it at a third of the size."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI * PIXEL_SCALE, format="png")
    image = Image.open(buffer).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def _legend_below(fig, ax, ncols: int | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols or len(labels), frameon=False)


def _colour(variant: str) -> str:
    return family(variant).colour


def _short(variant: str, titles: dict) -> str:
    """The registry's short label ("+SE") where the full title would not fit, else the title."""
    try:
        return family(variant).short
    except ValueError:
        return titles.get(variant, variant)


def _bars(ax, groups: dict[str, dict], variants: list[str], titles: dict, scale: float = 1.0,
          slots: list[str] | None = None) -> None:
    """Grouped bars: one group per config, one bar per model with its interval. ``slots`` places the groups
    at fixed positions (a config measured for only some methods keeps the others' places empty)."""
    slots = slots or list(groups)
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        xs, means, lows, highs = [], [], [], []
        for key in (k for k in slots if k in groups):
            iv = groups[key]["models"][v]
            mean = np.nan if iv["mean"] is None else iv["mean"] * scale
            xs.append(slots.index(key) + (j - (len(variants) - 1) / 2) * width)
            means.append(mean)
            lows.append(0 if iv["low"] is None else mean - iv["low"] * scale)
            highs.append(0 if iv["high"] is None else iv["high"] * scale - mean)
        ax.bar(xs, means, width, yerr=[lows, highs], capsize=2, color=_colour(v), label=titles[v],
               error_kw={"elinewidth": 0.8})
    ax.set_xlim(-0.5, len(slots) - 0.5)
    ax.set_xticks(np.arange(len(slots)), [CamConfig.label_of(k) for k in slots])
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


# The reference lines of the localisation plots: kind -> (legend label, line style)
REFERENCES = {
    "chance": ("chance: the mask's area share", {"color": "k", "ls": "--", "lw": 1}),
    "baseline": ("RandomCAM (baseline), mean of the models", {"color": "0.45", "ls": "-.", "lw": 1.3}),
}


def reference_lines(result: dict, split: str, metric: str, group: dict) -> dict[str, float]:
    """The levels a localisation metric of ``split`` is read against, by kind (``REFERENCES``), unscaled: for
    energy in mask, chance (the measured scenes' mean mask area share); for every metric, RandomCAM's mean over
    the models when the run measured it at layer4 (``group``: the metric's results by CAM config)."""
    lines = {}
    if metric.startswith("energy") and split in result.get("area_share", {}):
        lines["chance"] = float(result["area_share"][split])
    models = group.get(f"{BASELINE}@layer4", {}).get("models", {})
    means = [models[v]["mean"] for v in result["variants"] if models.get(v, {}).get("mean") is not None]
    if means:
        lines["baseline"] = float(np.mean(means))
    return lines


def _draw_references(ax, lines: dict[str, float], scale: float = 1.0) -> None:
    for kind, value in lines.items():
        label, style = REFERENCES[kind]
        ax.axhline(value * scale, label=label, **style)


def _confidence(result: dict) -> int:
    return int(round(result["config"]["confidence"] * 100))


def _plot_localisation(result: dict, path: Path) -> bool:
    test = result["localisation"].get("test")
    if not test:
        return False
    variants, titles = result["variants"], result["titles"]
    fig, axes = _figure(6.0, len(LOCALISATION), 1, sharex=True)
    for ax, metric in zip(axes[:, 0], LOCALISATION, strict=True):
        groups = {k: g for k, g in test[metric].items() if k.endswith("@layer4") and not k.startswith(f"{BASELINE}@")}
        label, _, percent = METRICS[metric]
        _bars(ax, groups, variants, titles, 100 if percent else 1)
        ax.set_ylabel(label + (" (%)" if percent else ""))
        _draw_references(ax, reference_lines(result, "test", metric, test[metric]), 100 if percent else 1)
        if metric == "iou":
            ax.set_ylabel(f"{label} at {result['threshold']['value']:.2f}")
    axes[-1][0].tick_params(axis="x", labelrotation=20)
    _legend_below(fig, axes[1][0], ncols=2)
    fig.suptitle(f"Layer4, {split_n(result, 'test')} {sample_words(result)} ({_confidence(result)} % CIs)")
    _save(fig, path)
    return True


def _plot_layers(result: dict, path: Path) -> bool:
    test = result["localisation"].get("test")
    if not test:
        return False
    layers = [layer for layer in TARGET_LAYERS if f"gradcam@{layer}" in test["pointing"]]
    if len(layers) < 2:
        return False
    variants, titles = result["variants"], result["titles"]
    fig, axes = _figure(2.9, 1, len(LOCALISATION))
    xs = np.arange(len(layers))
    for ax, metric in zip(axes[0], LOCALISATION, strict=True):
        label, _, percent = METRICS[metric]
        scale = 100 if percent else 1
        for v in variants:
            ivs = [test[metric][f"gradcam@{layer}"]["models"][v] for layer in layers]
            mean = np.array([np.nan if iv["mean"] is None else iv["mean"] for iv in ivs]) * scale
            low = np.array([np.nan if iv["low"] is None else iv["low"] for iv in ivs]) * scale
            high = np.array([np.nan if iv["high"] is None else iv["high"] for iv in ivs]) * scale
            ax.plot(xs, mean, "o-", ms=4, color=_colour(v), label=titles[v])
            ax.fill_between(xs, low, high, color=_colour(v), alpha=0.15)
        if metric == "energy":
            references = reference_lines(result, "test", metric, test[metric])
            _draw_references(ax, {k: v for k, v in references.items() if k == "chance"})
            if "baseline" in references and "layer4" in layers:  # measured at layer4 only: one point
                ax.plot([layers.index("layer4")], [references["baseline"]], marker="*", ms=9, ls="none",
                        color=REFERENCES["baseline"][1]["color"], label="RandomCAM at layer4 (baseline, mean)")
        ax.set_xticks(xs, [layer.removeprefix("layer") for layer in layers])
        ax.set_xlabel("layer")
        ax.set_title(label + (" (%)" if percent else ""))
        ax.grid(alpha=0.3)
    _legend_below(fig, axes[0][1], ncols=3 if len(axes[0][1].get_legend_handles_labels()[1]) <= 4 else 2)
    fig.suptitle(f"Grad-CAM, {sample_words(result)} (bands: {_confidence(result)} % CIs)")
    _save(fig, path)
    return True


def _plot_pairs(result: dict, path: Path) -> bool:
    pairs = result["pairs"]
    key = "gradcam@layer4"
    if not pairs or key not in pairs["pointing"]:
        return False
    variants, titles = result["variants"], result["titles"]
    fig, axes = _figure(2.9, 1, 2)
    for ax, metric in zip(axes[0], ("pointing", "energy"), strict=True):
        scale = 100 if metric == "pointing" else 1
        width = 0.38
        xs = np.arange(len(variants))
        for offset, which, hatch in ((-width / 2, metric, None), (width / 2, f"{metric}_other", "//")):
            ivs = [pairs[which][key]["models"][v] for v in variants]
            mean = np.array([iv["mean"] or 0 for iv in ivs]) * scale
            err = np.array([[m - (iv["low"] or 0) * scale for m, iv in zip(mean, ivs, strict=True)],
                            [(iv["high"] or 0) * scale - m for m, iv in zip(mean, ivs, strict=True)]])
            ax.bar(xs + offset, mean, width, yerr=err, capsize=3, color=[_colour(v) for v in variants],
                   hatch=hatch, edgecolor="white" if hatch else None, alpha=0.55 if hatch else 1.0)
        _draw_references(ax, reference_lines(result, "pairs", metric, pairs[metric]), scale)
        ax.set_xticks(xs, [_short(v, titles) for v in variants])
        ax.set_title("pointing game (%)" if metric == "pointing" else "energy on the object")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="0.35", label="on its own object"),
        Patch(facecolor="0.35", alpha=0.55, hatch="//", edgecolor="white", label="on the other object"),
    ]
    handles += axes[0][1].get_legend_handles_labels()[0]  # the energy panel's reference lines
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    n = result["accuracy"]["pairs_top2"]["n"]
    fig.suptitle(f"{n} two-object scenes: Grad-CAM at layer4 for each class")
    _save(fig, path)
    return True


def _plot_faithfulness(result: dict, path: Path) -> bool:
    faith = result["faithfulness"]
    if not faith:
        return False
    variants, titles = result["variants"], result["titles"]
    shown = [m for m in ("deletion", "insertion", "road_combined") if faith.get(m)]
    slots = list(faith[shown[0]])
    fig, axes = _figure(2.0 * len(shown) + 0.9, len(shown), 1, sharex=True)
    for ax, metric in zip(axes[:, 0], shown, strict=True):
        _bars(ax, faith[metric], variants, titles, slots=slots)
        label, higher, _ = METRICS[metric]
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)")
        if metric.startswith("road") and any(k not in faith[metric] for k in slots):
            ax.text(0.99, 0.95, "other methods: --road-methods", transform=ax.transAxes, ha="right", va="top",
                    fontsize=8, color="0.35")
    axes[-1][0].tick_params(axis="x", labelrotation=20)
    _legend_below(fig, axes[0][0])
    fig.suptitle(f"Layer4, {sample_words(result, result['samples']['faithfulness'])} ({_confidence(result)} % CIs)")
    _save(fig, path)
    return True


def _plot_curves(result: dict, path: Path) -> bool:
    curves = result["faithfulness"].get("curves", {}) if result["faithfulness"] else {}
    key = "gradcam@layer4" if "gradcam@layer4" in curves else next(iter(curves), None)
    if key is None:
        return False
    variants, titles = result["variants"], result["titles"]
    fig, axes = _figure(3.0, 1, 2, sharey=True)
    for ax, kind in zip(axes[0], ("deletion", "insertion"), strict=True):
        for v in variants:
            values = curves[key][v][kind]
            xs = np.linspace(0, 100, len(values))
            ax.plot(xs, values, "o-", ms=3, color=_colour(v), label=f"{_short(v, titles)}: {curve_auc(values):.3f}")
        ax.set_xlabel(f"% {'removed' if kind == 'deletion' else 'inserted'}, most relevant first")
        ax.set_ylim(0, 1.02)
        ax.set_title(kind)
        ax.grid(alpha=0.3)
        ax.legend(title="AUC", loc="upper right" if kind == "deletion" else "lower right")
    axes[0][0].set_ylabel("probability of the true class")
    fig.suptitle(f"{CamConfig.label_of(key)}, mean of {sample_words(result, result['samples']['faithfulness'])}")
    _save(fig, path)
    return True


def _plot_excitation(result: dict, path: Path, variant: str) -> bool:
    ex = result["excitation"].get(variant)
    if not ex or not ex["profiles"]:
        return False
    blocks = list(ex["profiles"])
    ncols = min(2, len(blocks))
    nrows = -(-len(blocks) // ncols)
    fig, axes = _figure(1.55 * nrows + 1.0, nrows, ncols, sharex=True, sharey=True)
    some_classes = [c for c in PROFILE_CLASSES if c in ex["profiles"][blocks[0]]["classes"]]
    some_classes = some_classes or list(ex["profiles"][blocks[0]]["classes"])[:4]
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    for n, block in enumerate(blocks):
        ax = axes[n // ncols][n % ncols]
        profile = ex["profiles"][block]
        xs = np.arange(len(profile["all"]))
        for c, name in enumerate(some_classes):
            ax.plot(xs, profile["classes"][name], lw=1, color=palette(c), label=name)
        ax.plot(xs, profile["all"], lw=1.6, color="k", ls="--", label="all")
        b = ex["blocks"].index(block)
        ax.set_title(f"{block} (specificity {ex['class_specificity'][b]:.2f})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if n % ncols == 0:
            ax.set_ylabel("excitation")
        if n // ncols == nrows - 1:
            ax.set_xlabel("channel index")
    for n in range(len(blocks), nrows * ncols):
        axes[n // ncols][n % ncols].set_visible(False)
    _legend_below(fig, axes[0][0])
    fig.suptitle(f"{result['titles'][variant]}, first {PROFILE_CHANNELS} channels, {result['samples']['test']} "
                 f"{sample_words(result)}")
    _save(fig, path)
    return True


def _plot_specificity(result: dict, path: Path) -> bool:
    gated = list(result["excitation"])
    if not gated:
        return False
    titles = result["titles"]
    fig, axes = _figure(4.6, 2, 1, sharex=True)
    blocks = result["excitation"][gated[0]]["blocks"]
    xs = np.arange(len(blocks))
    for ax, column, label in (
        (axes[0][0], "class_specificity", "class specificity (eta²)"),
        (axes[1][0], "mean", "mean excitation"),
    ):
        for v in gated:
            ax.plot(xs, result["excitation"][v][column], "o-", ms=4, color=_colour(v), label=titles[v])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1][0].set_xticks(xs, blocks, rotation=60, ha="right", rotation_mode="anchor")
    chance = result["excitation"][gated[0]]["chance_specificity"]
    axes[0][0].axhline(chance, color="k", ls="--", lw=1, label="chance for this sample")
    top = max(max(result["excitation"][v]["class_specificity"]) for v in gated)
    axes[0][0].set_ylim(0, min(1.02, max(top, chance) * 1.15 + 0.02))
    axes[1][0].set_ylim(0, 1.02)
    _legend_below(fig, axes[0][0])
    fig.suptitle("Channel attention per block, from early to late")
    _save(fig, path)
    return True


def _plot_spatial(result: dict, path: Path) -> bool:
    """Every spatially gated model's energy on the object per block, against chance (the object's area share)."""
    if not result["spatial"]:
        return False
    fig, axes = _figure(3.4)
    ax = axes[0][0]
    blocks = next(iter(result["spatial"].values()))["blocks"]
    xs = np.arange(len(blocks))
    for variant, sp in result["spatial"].items():
        energy = np.array([iv["mean"] for iv in sp["energy"]], float)
        low = np.array([iv["low"] for iv in sp["energy"]], float)
        high = np.array([iv["high"] for iv in sp["energy"]], float)
        ax.plot(xs, energy, "o-", ms=4, color=_colour(variant), label=result["titles"][variant])
        ax.fill_between(xs, low, high, color=_colour(variant), alpha=0.2)
    chance = np.array([iv["mean"] for iv in next(iter(result["spatial"].values()))["chance"]], float)
    ax.plot(xs, chance, "k--", lw=1, label="chance: the object's area share")
    ax.set_xticks(xs, blocks, rotation=60, ha="right", rotation_mode="anchor")
    ax.set_ylabel("share of the map on the object")
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    fig.suptitle(f"Spatial attention per block vs the true mask, {result['samples']['test']} {sample_words(result)}")
    _save(fig, path)
    return True


PLOTTERS: dict[str, Callable[[dict, Path], bool]] = {
    "localisation": _plot_localisation,
    "layers": _plot_layers,
    "pairs": _plot_pairs,
    "faithfulness": _plot_faithfulness,
    "curves": _plot_curves,
    "specificity": _plot_specificity,
    "spatial": _plot_spatial,
}  # and each section's own PLOTS (config.SECTIONS)


def _plotter(name: str) -> Callable[[dict, Path], bool]:
    if name in PLOTTERS:
        return PLOTTERS[name]
    for module in SECTIONS.values():
        plots = import_module(module).PLOTS
        if name in plots:
            return plots[name]
    raise KeyError(f"no plot named {name!r}")


def draw_plot(name: str, result: dict, path: Path) -> bool:
    """Draw one plot of ``plot_files(result)`` into ``path``; False when the result has nothing for it."""
    from matplotlib import rc_context

    with rc_context(FONT_SIZES):
        if name.startswith("excitation_"):
            return _plot_excitation(result, path, name.removeprefix("excitation_"))
        return _plotter(name)(result, path)
