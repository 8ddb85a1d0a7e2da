"""analysis.md (one function per section) and the files of a run: the JSON, the report and the plots."""

from __future__ import annotations

import json
from collections import defaultdict
from importlib import import_module
from pathlib import Path

from attnviz.analysis.config import (
    FAITHFULNESS,
    JSON_NAME,
    LOCALISATION,
    MARKDOWN_NAME,
    METRICS,
    PART_TITLES,
    SECTIONS,
    SKIP_LINES,
    CamConfig,
    plot_files,
    sample_words,
    split_n,
)
from attnviz.analysis.results import finite
from attnviz.methods import CAM_METHODS


def _number(value: float | None, percent: bool, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    value = value * 100 if percent else value
    text = (
        f"{value:+.1f}"
        if signed and percent
        else f"{value:.1f}"
        if percent
        else (f"{value:+.3f}" if signed else f"{value:.3f}")
    )
    return text


def _cell(iv: dict, percent: bool, signed: bool = False) -> str:
    if iv.get("mean") is None:
        return "n/a"
    text = f"{_number(iv['mean'], percent, signed)} [{_number(iv['low'], percent)}, {_number(iv['high'], percent)}]"
    return f"**{text}**" if iv.get("excludes_zero") else text


def _comparison_table(
    rows: dict[str, tuple[dict, bool]], variants: list[str], titles: dict, first_column: str
) -> list[str]:
    """One row per (comparison, in percent): each model's mean [CI], then each pairwise difference [CI], bold when
    its interval excludes 0."""
    pairs = [(a, b) for i, a in enumerate(variants) for b in variants[i + 1 :]]
    header = (
        [first_column]
        + [titles[v] for v in variants]
        + [f"{titles[b].replace('ResNet50 + ', '')} − {titles[a].replace('ResNet50 + ', '')}" for a, b in pairs]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, (group, percent) in rows.items():
        cells = [label] + [_cell(group["models"][v], percent) for v in variants]
        cells += [_cell(group["differences"][f"{b}-{a}"], percent, signed=True) for a, b in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _method_rows(group: dict, percent: bool) -> dict[str, tuple[dict, bool]]:
    return {CamConfig.label_of(key): (comparison, percent) for key, comparison in group.items()}


def _metric_heading(metric: str, result: dict, split: str | None = None) -> str:
    label, higher, percent = METRICS[metric]
    unit = " (%)" if percent else ""
    note = "higher is better" if higher else "lower is better"
    if metric == "iou":
        note += f"; threshold {result['threshold']['value']:.2f} of each map's maximum"
    if metric == "energy" and split in result["area_share"]:
        note += f"; chance (the mask's mean area share) {result['area_share'][split]:.3f}"
    return f"**{label}{unit}** ({note})"


def summary_rows(result: dict) -> dict[str, tuple[dict, bool]]:
    """The headline comparison (test scenes, Grad-CAM at layer4): metric label -> (comparison, in percent)."""
    rows: dict[str, tuple[dict, bool]] = {}
    gradcam = "gradcam@layer4"
    if "test" in result["accuracy"]:
        rows["top-1 accuracy (%)"] = (result["accuracy"]["test"], True)
    for metric in LOCALISATION:
        group = result["localisation"].get("test", {}).get(metric, {})
        if gradcam in group:
            label, _, percent = METRICS[metric]
            rows[label + (" (%)" if percent else "")] = (group[gradcam], percent)
    for metric in ("deletion", "insertion", "road_combined"):
        group = result.get("faithfulness", {}).get(metric, {})
        if gradcam in group:
            rows[METRICS[metric][0] + (" ↑" if METRICS[metric][1] else " ↓")] = (group[gradcam], False)
    return rows


def coinciding_methods(result: dict) -> list[list[str]]:
    """Groups of layer4 CAM methods that scored the same on every metric, split and model of the result.

    On a ResNet the gradient of a class logit at layer4's output is the same at every position (global
    average pooling, then one linear layer), so Grad-CAM, XGrad-CAM and HiResCAM weight the channels alike
    there; a reader should know that three rows are one map, and the data, not an assumption, says so.
    """
    signatures: dict[str, list] = defaultdict(list)
    sections = [group for split in result["localisation"].values() for group in split.values()]
    sections += [result.get("pairs", {}).get(m, {}) for m in ("pointing", "pointing_other", "energy", "energy_other")]
    sections += [group for m, group in result.get("faithfulness", {}).items() if m in ("deletion", "insertion")]
    keys = [k for k in sections[0] if k.endswith("@layer4")] if sections else []
    for group in sections:
        for key in keys:
            cell = group.get(key)
            models = cell["models"] if cell else {}
            signatures[key].append(
                tuple(
                    None if models.get(v, {}).get("mean") is None else round(models[v]["mean"], 4)
                    for v in result["variants"]
                )
            )
    groups: dict[tuple, list[str]] = defaultdict(list)
    for key in keys:
        groups[tuple(signatures[key])].append(key)
    return [[CamConfig.label_of(k) for k in members] for members in groups.values() if len(members) > 1]


def _coinciding_note(result: dict) -> list[str]:
    groups = coinciding_methods(result)
    if not groups:
        return []
    named = "; ".join(", ".join(g[:-1]) + " and " + g[-1] for g in groups)
    note = f"- **Same maps**: {named} scored the same on every metric here"
    if any("Grad-CAM" in g and "HiResCAM" in g for g in groups):
        note += (
            ": at layer4 the gradient of a class logit is the same at every position (global average pooling "
            "and one linear layer follow), so these methods weight the channels alike. Their rows repeat one map"
        )
    return [note + "."]


def render_summary(result: dict) -> str:
    """The headline table as markdown (empty when nothing was measured): what the app's Analysis tab shows first."""
    rows = summary_rows(result)
    if not rows:
        return ""
    return "\n".join(_comparison_table(rows, result["variants"], result["titles"], "metric"))


def render_markdown(result: dict) -> str:
    """analysis.md: how it was made, the headline table, then every section's tables with their intervals."""
    titles = result["titles"]
    lines = _header(result) + _summary_section(result)
    split_titles = {"test": "the images" if result.get("data") else "test scenes",
                    "unseen": "unseen-glyph scenes (glyphs never seen in training)"}
    for split, title in split_titles.items():
        lines += _localisation_section(result, split, title)
    lines += _pairs_section(result) + _scorecam_section(result) + _faithfulness_section(result)
    lines += _excitation_section(result)
    for variant in result["spatial"]:
        lines += _spatial_section(result, variant)
    for module in SECTIONS.values():
        lines += import_module(module).markdown(result, titles)
    return "\n".join(lines + _skipped_images(result) + _definitions(result))


def _data_lines(result: dict) -> list[str]:
    """The sample of a run on the user's folder: where the images are, how many were measured and left out, and
    the masks' mean area share (the chance level of energy in mask)."""
    data, samples, config = result["data"], result["samples"], result["config"]
    held, measured, skipped = len(data["held_out"]), len(data["measured"]), len(data["skipped"])
    labels = f"; classes from `{data['labels']}`" if data["labels"] else ""
    lines = [
        f"- **Data**: the user's folder `{data['images']}` (masks `{data['masks']}`{labels}): {data['files']} image "
        f"files, {data['usable']} usable"
        + (f", {skipped} skipped (listed under \"Skipped images\")" if skipped else "")
        + (f"; {held} held out at random (seed {data['seed']}) to choose the IoU threshold and not measured"
           if held else "; the IoU threshold is given, so every usable image is measured")
        + (f"; a random {measured} of the rest measured (--test)" if data["limit"] and data["limit"] == measured
           else f"; {measured} measured") + ", in path order.",
    ]
    if "test" in result["area_share"]:
        lines.append(f"- **Masks**: the object covers on average {result['area_share']['test']:.3f} of the model's "
                     f"view ({result['input_size']} px after the set's resize and centre crop): the chance level of "
                     f"energy in mask, which a uniform map scores.")
    faith = samples["faithfulness"]
    lines.append(f"- **Subsets**: faithfulness on {sample_words(result, faith) if faith else 'none'}; "
                 + (f"Score-CAM on {sample_words(result, samples['scorecam'])}." if samples["scorecam"] else
                    "no Score-CAM (`--scorecam N` adds it on N of the images).")
                 + f" Deletion steps {config['steps']}.")
    return lines


def _skipped_images(result: dict, shown: int = SKIP_LINES) -> list[str]:
    skipped = (result.get("data") or {}).get("skipped") or []
    if not skipped:
        return []
    lines = ["## Skipped images", "", f"{len(skipped)} image file(s) of the folder were not measured:", ""]
    lines += [f"- `{s['file']}`: {s['reason']}" for s in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"- ... and {len(skipped) - shown} more (analysis.json, \"data\" -> \"skipped\")")
    return lines + [""]


def _header(result: dict) -> list[str]:
    config, samples, timing = result["config"], result["samples"], result["timing"]
    machine, versions = result["machine"], result["versions"]
    conf = int(round(config["confidence"] * 100))
    data = result.get("data")
    title = f"# attnviz analysis: model set `{result['set']}`" + (f" on the images of `{data['images']}`"
                                                                   if data else "")
    lines = [title, "", f"Regenerate with `{result['command']}` (every number and plot here comes from that command).",
             ""]
    if data:
        lines += _data_lines(result)
    else:
        lines.append(
            f"- **Sample** (scenes regenerated from seed {samples['scene_seed']}, the first *n* of each split): "
            f"{samples['val']} val (IoU threshold), {samples['test']} test, {samples['unseen']} unseen-glyph, "
            f"{samples['pairs']} two-object scenes; faithfulness on the first {samples['faithfulness']} test scenes; "
            + (
                f"Score-CAM on the first {samples['scorecam']}."
                if samples["scorecam"]
                else "no Score-CAM (one forward pass per channel of layer4, 2048 per scene and model: "
                "`--scorecam N` adds it on the first N test scenes)."
            ))
    if result.get("skipped"):
        lines.append("- **Not measured here**: " + "; ".join(f"{PART_TITLES.get(name, name)} ({reason})"
                                                            for name, reason in result["skipped"].items()) + ".")
    unit = "images" if data else "scenes"
    lines += [
        f"- **Target**: {result['target']}. Input {result['input_size']} px.",
        f"- **Time**: {timing['total_s'] / 60:.1f} min in all ("
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing["phases_s"].items())
        + ").",
        f"- **Machine**: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        f"- **Intervals**: {conf} % paired percentile bootstrap over the same {unit} ({config['resamples']} "
        f"resamples, seed {config['seed']}); a difference such as CBAM − SE is taken {unit[:-1]} by {unit[:-1]} and "
        f"is **bold** when its interval excludes 0."
        + ("" if data else " A two-object scene counts once (its two CAMs averaged)."),
    ]
    return lines + _coinciding_note(result) + [""]


def _summary_section(result: dict) -> list[str]:
    summary = render_summary(result)
    noun = "the images" if result.get("data") else "test scenes"
    return [f"## Summary: {noun}, Grad-CAM at layer4", "", summary, ""] if summary else []


def _localisation_section(result: dict, split: str, title: str) -> list[str]:
    if split not in result["localisation"]:
        return []
    variants, titles = result["variants"], result["titles"]
    lines = [f"## Localisation: {title} (n = {split_n(result, split)})", ""]
    if split in result["accuracy"]:
        lines += _comparison_table({"top-1 accuracy (%)": (result["accuracy"][split], True)}, variants, titles,
                                   "accuracy")
    else:
        lines.append("No accuracy: each model explains its own top-1 class (`--labels` gives each image's class).")
    lines.append("")
    for metric in LOCALISATION:
        group = result["localisation"][split][metric]
        lines += [_metric_heading(metric, result, split), ""]
        lines += _comparison_table(_method_rows(group, METRICS[metric][2]), variants, titles, "method")
        lines.append("")
    return lines


def _pairs_section(result: dict) -> list[str]:
    if not result["pairs"]:
        return []
    variants, titles, pairs = result["variants"], result["titles"], result["pairs"]
    n = result["accuracy"]["pairs_top2"]["n"]
    lines = [
        f"## Two-object scenes (n = {n} scenes, one CAM per class)",
        "",
        "Does the CAM for each class light up its own object? *own* is the explained class's object, "
        "*other* the second object.",
        "",
    ]
    lines += _comparison_table(
        {"classes found in the top-2 (%)": (result["accuracy"]["pairs_top2"], True)}, variants, titles, "accuracy"
    )
    lines.append("")
    for metric, title in (
        ("pointing", "pointing game on its own object (%)"),
        ("pointing_other", "pointing game on the other object (%)"),
        ("energy", "energy on its own object"),
        ("energy_other", "energy on the other object"),
    ):
        lines += [f"**{title}**", ""]
        lines += _comparison_table(_method_rows(pairs[metric], metric.startswith("pointing")), variants, titles,
                                   "method")
        lines.append("")
    for metric in ("pointing", "energy"):
        percent = metric == "pointing"
        lines += [
            f"**own − other, {METRICS[metric][0]}{' (points)' if percent else ''}**",
            "",
            "| method | " + " | ".join(titles[v] for v in variants) + " |",
            "|" + "---|" * (len(variants) + 1),
        ]
        for key, per_variant in pairs["own_minus_other"][metric].items():
            cells = [_cell(per_variant[v], percent, signed=True) for v in variants]
            lines.append(f"| {CamConfig.label_of(key)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _scorecam_section(result: dict) -> list[str]:
    if not result["scorecam"]:
        return []
    lines = [
        f"## Score-CAM at layer4 ({sample_words(result, result['samples']['scorecam'])}, Grad-CAM on the same "
        f"ones)",
        "",
        "Score-CAM runs one forward pass per channel of layer4 (2048 per image and model), so it gets only "
        "a few scenes: read these as examples, not as a measurement.",
        "",
    ]
    for metric in LOCALISATION:
        lines += [_metric_heading(metric, result), ""]
        lines += _comparison_table(
            _method_rows(result["scorecam"][metric], METRICS[metric][2]), result["variants"], result["titles"], "method"
        )
        lines.append("")
    return lines


def _faithfulness_section(result: dict) -> list[str]:
    if not result["faithfulness"]:
        return []
    config = result["config"]
    pct = ", ".join(str(p) for p in config["road_percentiles"])
    road = ", ".join(CAM_METHODS[m].label for m in config.get("road_methods", config["methods"]))
    lines = [
        f"## Faithfulness ({sample_words(result, result['samples']['faithfulness'])}, layer4)",
        "",
        f"Score: the softmax probability of the {'explained' if result.get('data') else 'true'} class. Deletion "
        f"replaces the most relevant pixels "
        f"first by a blurred copy of the image (Gaussian, sigma {config['blur_sigma']:g} px at 224 px), "
        f"insertion puts them first into the blurred copy, in {config['steps']} steps of "
        f"{100 / config['steps']:.0f} % of the pixels; the AUC is the mean probability over the curve. "
        f"ROAD (pytorch-grad-cam's noisy linear imputation) removes {pct} % of the pixels, most relevant "
        f"first (MoRF) or least relevant first (LeRF), and reports the mean change in probability; "
        f"combined = (LeRF − MoRF) / 2; measured for {road}.",
        "",
    ]
    for metric in FAITHFULNESS:
        group = result["faithfulness"].get(metric, {})
        lines += [_metric_heading(metric, result), ""]
        lines += _comparison_table(_method_rows(group, False), result["variants"], result["titles"], "method")
        lines.append("")
    return lines


def _excitation_section(result: dict) -> list[str]:
    if not result["excitation"]:
        return []
    titles, excitation = result["titles"], result["excitation"]
    gated = list(excitation)
    lines = [
        "## Excitation (the SE paper's analysis)",
        "",
        f"Channel weights of every attention block on the {result['samples']['test']} {sample_words(result)}"
        f"{', grouped by the class each model explains' if result.get('data') else ''}. *class "
        "specificity*: the share of the weights' variance across images that the class explains (eta², "
        "pooled over channels; 0 = the same for every class; about "
        f"{excitation[gated[0]]['chance_specificity']:.3f} by chance with "
        "this many per class). *spread*: the standard deviation across "
        "classes of each channel's class mean, averaged over channels. *near 1*: share of channels whose "
        "mean weight is above 0.9.",
        "",
    ]
    header = ["block"] + [
        f"{titles[v].replace('ResNet50 + ', '')} {col}" for v in gated for col in ("specificity", "spread", "mean",
                                                                                   "near 1")
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b, block in enumerate(excitation[gated[0]]["blocks"]):
        cells = [block]
        for v in gated:
            ex = excitation[v]
            cells += [f"{ex['class_specificity'][b]:.3f}", f"{ex['spread'][b]:.3f}", f"{ex['mean'][b]:.3f}",
                      f"{ex['near_one'][b]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _spatial_section(result: dict, variant: str) -> list[str]:
    sp = result["spatial"][variant]
    lines = [
        f"## {result['titles'][variant]}: spatial attention and the object",
        "",
        "Per block, the share of the spatial map's mass on the object (the mask averaged over each cell "
        "of the map) against the chance level, the mask's area share; the ratio is the mean attention on "
        "the object over the mean attention off it.",
        "",
        "| block | energy on object | chance | energy − chance | inside / outside |",
        "|---|---|---|---|---|",
    ]
    for b, block in enumerate(sp["blocks"]):
        lines.append(
            f"| {block} | {_cell(sp['energy'][b], False)} | {_cell(sp['chance'][b], False)} | "
            f"{_cell(sp['energy_minus_chance'][b], False, signed=True)} | "
            f"{sp['inside_outside_ratio'][b]:.3f} |"
        )
    return lines + [""]


def _definitions(result: dict) -> list[str]:
    config = result["config"]
    return [
        "## Definitions",
        "",
        f"- **Pointing game**: a hit when the map's maximum lies within {config['tolerance']:g} px of the object's "
        "mask (Zhang et al. 2016); a flat map misses.",
        "- **Energy in mask**: the share of the map's total mass inside the mask; a uniform map scores the "
        "mask's area share.",
        f"- **Mask IoU**: IoU of the mask and the map's region at or above {result['threshold']['value']:.2f} of "
        f"its maximum ({result['threshold']['chosen_on']}).",
        "- **CAMs**: pytorch-grad-cam's method classes on the activations and gradients of one forward and one "
        "backward pass per image and model; every map is scaled to [0, 1] on its own.",
        "",
    ]


def write_report(result: dict, out: Path) -> list[Path]:
    """Write analysis.json, analysis.md and the plots into ``out``; returns the files written."""
    from attnviz.analysis.plots import draw_plot  # matplotlib: imported when drawing

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stale in out.glob("excitation_*.png"):  # a model analysed in an earlier run may be gone
        stale.unlink()
    result["plots"] = []
    for name, file in plot_files(result).items():
        path = out / file
        path.unlink(missing_ok=True)  # a plot this run cannot draw must not stay from an earlier run
        if draw_plot(name, result, path):
            result["plots"].append(file)
            written.append(path)
    (out / MARKDOWN_NAME).write_text(render_markdown(result), encoding="utf-8")
    text = json.dumps(finite(result), indent=1, ensure_ascii=False, allow_nan=False)
    (out / JSON_NAME).write_text(text + "\n", encoding="utf-8")
    return [out / JSON_NAME, out / MARKDOWN_NAME, *written]
