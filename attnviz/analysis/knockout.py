"""The analysis' knock-out section: what each stage's attention does for the decision and for where the CAM
looks, over the test scenes, with paired intervals.

For every model with attention gates and every stage, the stage's gates are switched off (each outputs its
mean over the validation scenes, or 1 with ``identity``) and the same test scenes are explained again:
accuracy and Grad-CAM's energy in mask at layer4, each against the trained model on the same scenes (a
paired bootstrap). The stage whose knock-out changes a measure most is the one whose attention matters most
for it. Run alone with ``python -m attnviz.analyze --sections knockout``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from attnviz.analysis.config import sample_words
from attnviz.knockout import parse_knockout, replacements
from attnviz.metrics import energy_in_mask, paired_bootstrap
from attnviz.models import TARGET_LAYERS

CAM = ("gradcam", "layer4")


def _measure(explainer, x, targets, own, replace) -> tuple[np.ndarray, np.ndarray]:
    out = explainer.explain_batch(x, targets, [CAM], replace=replace)
    correct = (out.logits.argmax(dim=1).numpy() == np.asarray(targets)).astype(np.float64)
    return correct, energy_in_mask(out.maps[CAM], own)


def skip_reason(source, config) -> str | None:
    """Why the section cannot run on ``source``'s items, or None: its accuracy needs each image's true class."""
    if source.top1 and config.knockout_scenes:
        return ("it measures accuracy against each image's true class, and without --labels each model explains "
                "its own top-1; give --labels to run it")
    return None


def _plans(ctx) -> tuple[str, str, dict]:
    """What a switched-off gate outputs (the stored means, or identity when a model has none), the note saying
    so, and each gated model's replacements per stage: the same on the driver and on every worker."""
    gated = {v: e for v, e in ctx.explainers.items() if e.gates}
    value, note = ctx.config.knockout_value, ""
    missing = [v for v, e in gated.items() if value == "mean" and e.gate_means() is None]
    if missing:  # a set without stored means (python -m attnviz.knockout fit) is measured at identity
        value, note = "identity", f"no stored gate means for {', '.join(missing)}: identity used"
    plans = {}
    for variant, explainer in gated.items():
        means = explainer.gate_means() if value == "mean" else None
        plans[variant] = {stage: replacements(parse_knockout(stage, explainer.gates), value, means)
                          for stage in TARGET_LAYERS}
    return value, note, plans


def run_section(ctx, engine=None) -> dict:
    """The section's result for the analysis' context (its models, config and test scenes). Its scenes are cut
    into units (``knockout_unit``) that ``engine`` runs: here, or on Ray workers."""
    from attnviz.analysis.engine import LocalEngine, plan_sample_units

    config = ctx.config
    started = time.perf_counter()
    value, note, plans = _plans(ctx)
    count = config.knockout_scenes
    result = {"value": value, "scenes": count, "cam": "gradcam@layer4", "stages": list(TARGET_LAYERS), "models": {},
              "note": note}
    reason = skip_reason(ctx.source, config)
    if reason:
        return {**result, "skipped": reason}
    if not count or not plans:
        return result  # nothing to switch off, or asked for no scenes (--knockout-scenes 0)
    (engine or LocalEngine()).run(ctx, plan_sample_units("knockout", count, config.batch_size), f"knock-out ({value})")
    for variant in plans:
        result["models"][variant] = _summary(ctx.knockout[variant], config)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def knockout_unit(ctx, unit) -> None:
    """Scenes ``unit.start``..``unit.stop``-1 of the section's sample (the first test scenes; a folder's images:
    drawn at random), through every gated model, trained and with each stage switched off: each scene's
    correctness and Grad-CAM energy in mask, added to ``ctx.knockout``."""
    _, _, plans = _plans(ctx)
    from attnviz.analysis.engine import sample_items

    items = sample_items(ctx, ctx.config.knockout_scenes, unit)
    x = torch.stack([it.tensor for it in items])
    targets = [it.target for it in items]
    own = np.stack([it.own for it in items])
    for variant, stages in plans.items():
        found = ctx.knockout.setdefault(variant, {})
        for name, replace in [("trained", None), *stages.items()]:
            correct, energy = _measure(ctx.explainers[variant], x, targets, own, replace)
            values = found.setdefault(name, ([], []))
            values[0].extend(correct.tolist())
            values[1].extend(energy.tolist())


def _summary(found: dict, config) -> dict:
    """Per measure: the trained model's mean, each stage's knocked-out mean and its paired difference."""
    out: dict = {}
    for m, measure in enumerate(("accuracy", "energy")):
        boot = paired_bootstrap({name: np.array(v[m]) for name, v in found.items()}, config.resamples,
                                config.confidence, config.seed)
        stages = {}
        for stage in TARGET_LAYERS:
            iv = boot.differences["trained", stage]
            stages[stage] = {"mean": boot.means[stage].to_dict(),
                             "change": {**iv.to_dict(), "excludes_zero": iv.excludes_zero}}
        largest = max(TARGET_LAYERS, key=lambda s: abs(stages[s]["change"]["mean"]))
        out[measure] = {"trained": boot.means["trained"].to_dict(), "stages": stages,
                        "matters_most": largest if stages[largest]["change"]["excludes_zero"] else None}
    return out


def _replaced_by(value: str) -> str:
    return "their mean over the validation scenes" if value == "mean" else "1 (identity)"


def markdown(result: dict, titles: dict) -> list[str]:
    """The section of analysis.md."""
    section = result.get("knockout")
    if not section or not section["models"]:
        return []
    lines = [f"## Switching each stage's attention off ({section['value']})", "",
             f"Each stage's gates output {_replaced_by(section['value'])}; "
             f"the same {section['scenes']} {sample_words(result)}, accuracy and Grad-CAM's energy in mask at "
             "layer4, each change against the trained model on the same ones with its paired 95 % interval "
             "(**bold**: the interval excludes 0)." + (f" Note: {section['note']}." if section.get("note") else ""), "",
             "| model | measure | trained | " + " | ".join(f"{s} off" for s in section["stages"]) + " | matters most |",
             "|---|---|---|" + "---|" * len(section["stages"]) + "---|"]
    for variant, model in section["models"].items():
        for measure in ("accuracy", "energy"):
            row = model[measure]
            cells = []
            for stage in section["stages"]:
                change = row["stages"][stage]["change"]
                text = f"{change['mean']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]"
                cells.append(f"**{text}**" if change["excludes_zero"] else text)
            lines.append(f"| {titles.get(variant, variant)} | {measure} | {row['trained']['mean']:.3f} | "
                         + " | ".join(cells) + f" | {row['matters_most'] or 'none beyond noise'} |")
    return [*lines, ""]


def plot(result: dict, path) -> bool:
    """Each model's change in accuracy and in energy in mask when a stage's attention is off, with intervals."""
    section = result.get("knockout")
    if not section or not section["models"]:
        return False
    from attnviz.analysis.plots import _figure, _save
    from attnviz.render import VARIANT_COLOURS

    fig, axes = _figure(6.0, 2, 1)
    stages = section["stages"]
    models = list(section["models"])
    width = 0.8 / len(models)
    for ax, measure, label in ((axes[0][0], "accuracy", "change in accuracy"),
                               (axes[1][0], "energy", "change in Grad-CAM's energy in mask")):
        for k, variant in enumerate(models):
            changes = [section["models"][variant][measure]["stages"][s]["change"] for s in stages]
            xs = np.arange(len(stages)) + (k - (len(models) - 1) / 2) * width
            means = np.array([c["mean"] for c in changes])
            errors = np.array([[c["mean"] - c["low"] for c in changes], [c["high"] - c["mean"] for c in changes]])
            ax.bar(xs, means, width, yerr=errors, capsize=3, color=VARIANT_COLOURS.get(variant, "grey"),
                   label=result["titles"].get(variant, variant))
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(stages)), [f"{s} off" for s in stages])
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"Each stage's attention switched off ({section['value']}), {section['scenes']} "
                 f"{sample_words(result)},\nagainst the trained model on the same ones (paired 95 % intervals)")
    _save(fig, path)
    return True


PLOTS = {"knockout": plot}
