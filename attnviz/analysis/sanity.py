"""The analysis' sanity section: the model-parameter randomisation test (Adebayo et al. 2018) of each CAM method
on every model of the set, over the first test scenes, with bootstrap intervals over the scenes.

Every map explains the trained model's predicted class at layer4; each model is randomised from the top down
on a private copy (``attnviz.sanity``), one step more at a time (cascade) and one step at a time (independent).
The rule: a method passes on a model when the upper end of the 95 % interval of its mean Spearman correlation
after the full cascade is below 0.5; otherwise it fails. The Sobel edge map, which ignores the model, is the
reference that must fail. Run alone with ``python -m attnviz.analyze --sections sanity``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from attnviz.analysis.config import sample_words
from attnviz.methods import CAM_METHODS
from attnviz.sanity import (
    DEFAULT_LAYER,
    EDGES,
    EDGES_LABEL,
    STEM,
    THRESHOLD,
    check_model,
    depth_labels,
    join,
    summarise,
)


def unit_scenes(config) -> int:
    """Scenes per unit of work: a quarter of a batch (the default 16 scenes make 4 units to spread over Ray
    workers; each scene takes 1 + 2 x 18 passes per model, so a unit still takes longer than a localisation
    batch)."""
    return max(1, config.batch_size // 4)


def run_section(ctx, engine=None) -> dict:
    """The section's result for the analysis' context (its models, config and test scenes). Its scenes are cut
    into units (``sanity_unit``) that ``engine`` runs: here, or on Ray workers. Each model's randomised weights
    depend on the seed and the step only, so a unit's scenes get the values of one pass over all of them."""
    from attnviz.analysis.engine import LocalEngine, plan_sample_units

    config = ctx.config
    started = time.perf_counter()
    count, methods = config.sanity_scenes, list(config.sanity_methods)
    result = {"scenes": count, "split": "test", "layer": DEFAULT_LAYER, "methods": methods, "threshold": THRESHOLD,
              "confidence": config.confidence, "seed": config.seed, "steps": [], "models": {}}
    if not count:
        return result  # asked for no scenes (--sanity-scenes 0)
    (engine or LocalEngine()).run(ctx, plan_sample_units("sanity", count, unit_scenes(config)), "sanity")
    for variant in ctx.explainers:
        found = join(ctx.sanity[variant])
        result["steps"] = found.steps
        result["models"][variant] = summarise(found, config.resamples, config.confidence, config.seed)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def sanity_unit(ctx, unit) -> None:
    """Scenes ``unit.start``..``unit.stop``-1 of the section's sample (the first test scenes; a folder's images:
    drawn at random): every model's randomisation test on them, added to ``ctx.sanity``."""
    config = ctx.config
    from attnviz.analysis.engine import sample_items

    x = torch.stack([it.tensor for it in sample_items(ctx, config.sanity_scenes, unit)])
    for variant, explainer in ctx.explainers.items():
        found = check_model(explainer.model, variant, ctx.model_set.classes, x, list(config.sanity_methods),
                            DEFAULT_LAYER, seed=config.seed, batch_size=config.batch_size)
        ctx.sanity.setdefault(variant, []).append(found)


def _label(kind: str) -> str:
    return EDGES_LABEL if kind == EDGES else CAM_METHODS[kind].label


def _cell(iv: dict) -> str:
    return f"{iv['mean']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}]"


def _lowest_independent(model: dict, kind: str, steps: list[str]) -> str:
    rows = model.get("independent", {}).get("spearman", {}).get(kind)
    if not rows:
        return "–"
    i = int(np.argmin([r["mean"] for r in rows]))
    return f"{rows[i]['mean']:.2f} ({steps[i]})"


def rule_text(section: dict) -> str:
    """The rule, in the words the report and the README use."""
    confidence = int(round(section["confidence"] * 100))
    return (f"A method **passes** when the mean Spearman correlation of its maps with the original after the full "
            f"cascade is below {section['threshold']:g} with its {confidence} % interval, i.e. the upper end of the "
            f"interval is below {section['threshold']:g}; otherwise it **fails**.")


def markdown(result: dict, titles: dict) -> list[str]:
    """The section of analysis.md."""
    section = result.get("sanity")
    if not section or not section["models"]:
        return []
    steps = section["steps"]
    lines = ["## Sanity check: model-parameter randomisation (Adebayo et al. 2018)", "",
             f"Each model is re-initialised from the top on a copy, one step more at a time (cascade: "
             f"{', '.join(steps[:2])}, ..., {steps[-2]}, {STEM} = conv1 and bn1), and each map of the "
             f"{'' if result.get('data') else 'first '}{section['scenes']} {sample_words(result)} at "
             f"{section['layer']} (explaining the trained model's predicted class) "
             f"is compared with the original: Spearman rank correlation of absolute values and SSIM, means over "
             f"the scenes with bootstrap intervals; a map with one value everywhere (e.g. Grad-CAM's after its ReLU "
             f"cut every position) ranks nothing and correlates 0 with a varying original. The independent test "
             f"randomises one step at a time. The Sobel "
             f"edge map ignores the model: it is the reference that must fail.", "", rule_text(section), "",
             "| model | map | Spearman after the full cascade | SSIM after it | lowest independent Spearman (step) "
             "| verdict |", "|---|---|---|---|---|---|"]
    for variant, model in section["models"].items():
        for kind in [*section["methods"], EDGES]:
            verdict = model["verdict"][kind]
            ssim_final = model["cascade"]["ssim"][kind][-1]
            lines.append(f"| {titles.get(variant, variant)} | {_label(kind)} | {_cell(verdict['final'])} | "
                         f"{_cell(ssim_final)} | {_lowest_independent(model, kind, steps)} | "
                         f"{'passes' if verdict['passes'] else '**fails**'} |")
    return [*lines, ""]


def plot(result: dict, path, test: str = "cascade") -> bool:
    """Spearman and SSIM against randomisation depth, one row per model, one line per method and the edge map,
    bootstrap intervals as bands, the rule's 0.5 line."""
    section = result.get("sanity")
    if not section or not section["models"] or not all(test in m for m in section["models"].values()):
        return False
    from attnviz.analysis.plots import _figure, _legend_below, _save

    models = list(section["models"])
    row_height = min(1.75, 6.6 / len(models))  # four models or more: rows shrink, the page's plots stay <= 1600 px
    fig, axes = _figure(1.2 + row_height * len(models), len(models), 2, sharex=True, sharey=True)
    kinds = [*section["methods"], EDGES]
    colours = {kind: f"C{i}" for i, kind in enumerate(section["methods"])} | {EDGES: "black"}
    for row, variant in enumerate(models):
        for col, measure in enumerate(("spearman", "ssim")):
            ax = axes[row][col]
            for kind in kinds:
                rows = section["models"][variant][test][measure][kind]
                xs = np.arange(len(rows)) + (0 if test == "cascade" else 1)
                means = [r["mean"] for r in rows]
                ax.plot(xs, means, color=colours[kind], lw=1.3, ls="--" if kind == EDGES else "-",
                        label=_label(kind))
                ax.fill_between(xs, [r["low"] for r in rows], [r["high"] for r in rows], color=colours[kind],
                                alpha=0.15, lw=0)
            if measure == "spearman" and test == "cascade":
                ax.axhline(section["threshold"], color="grey", lw=0.9, ls=":", label=f"rule: {section['threshold']:g}")
            ax.set_title(f"{result['titles'].get(variant, variant)}: "
                         f"{'Spearman (|map|)' if measure == 'spearman' else 'SSIM'}")
            ax.set_ylim(-1.05, 1.05)
            ax.grid(alpha=0.3)
            _depth_ticks(ax, section["steps"], first=0 if test == "cascade" else 1)
            if row == len(models) - 1:
                ax.set_xlabel("steps randomised (0: the original)" if test == "cascade" else "the step randomised")
    _legend_below(fig, axes[0][0], ncols=4)
    what = "cascade: randomised from the top" if test == "cascade" else "independent: one step randomised"
    fig.suptitle(f"Sanity check ({what}), {section['scenes']} {sample_words(result)}, {section['layer']}, "
                 f"{int(round(section['confidence'] * 100))} % intervals")
    _save(fig, path)
    return True


def _depth_ticks(ax, steps: list[str], first: int = 0) -> None:
    """A tick at every step, labelled where a stage starts: 0 (the original, from ``first`` 0 only), fc, l4, l3,
    l2, l1, stem."""
    positions, labels = list(range(len(steps) + 1)), depth_labels(steps)
    ax.set_xticks(positions[first:], labels[first:])
    ax.set_xlim(first - 0.3, len(steps) + 0.3)


PLOTS = {
    "sanity": lambda result, path: plot(result, path, "cascade"),
    "sanity_independent": lambda result, path: plot(result, path, "independent"),
}
