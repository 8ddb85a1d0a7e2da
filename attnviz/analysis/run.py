"""The measuring phases of a run: the IoU threshold, localisation per split, Score-CAM, and the sections."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import import_module

import numpy as np
import torch
import torch.nn.functional as F

from attnviz.analysis.config import BASELINE, LOCALISATION, SECTIONS, AnalysisConfig, CamConfig
from attnviz.analysis.faithfulness import measure_faithfulness
from attnviz.analysis.items import BatchPass, Item, explain_batch, scene_items
from attnviz.analysis.stats import ExcitationStats, Records, per_scene, summarise
from attnviz.errors import AttnvizError
from attnviz.explainer import ModelExplainer
from attnviz.metrics import (
    THRESHOLD_GRID,
    area_share,
    choose_threshold,
    energy_in_mask,
    iou_curve,
    mask_iou,
    pointing_hits,
    target_probability,
)
from attnviz.models import VARIANTS
from attnviz.scenes import CLASSES
from attnviz.weights import LoadedSet


@dataclass
class _Context:
    model_set: LoadedSet
    config: AnalysisConfig
    explainers: dict[str, ModelExplainer]
    progress: bool
    threshold: float = 0.5
    records: dict[str, Records] = field(default_factory=lambda: defaultdict(Records))
    faith_maps: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    faith_items: list[Item] = field(default_factory=list)
    faith_probability: dict[tuple[int, str], float] = field(default_factory=dict)
    excitation: dict[str, ExcitationStats] = field(default_factory=dict)
    # variant -> block -> statistic -> values, for every model with spatial attention
    spatial: dict[str, dict[str, dict[str, list[float]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    area: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    curves: dict[tuple[str, str, str], list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    timing: dict[str, float] = field(default_factory=dict)

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(
            total=total, desc=desc, unit="scene", disable=not self.progress, file=sys.stderr, dynamic_ncols=True
        )


def _batches(split: str, count: int, ctx: _Context):
    """Items of ``count`` scenes, a batch of about ``batch_size`` CAMs at a time, with the number of scenes."""
    batch: list[Item] = []
    scenes = 0
    for index in range(count):
        batch.extend(scene_items(split, index, ctx.model_set.classes, ctx.model_set.preprocessing))
        scenes += 1
        if len(batch) >= ctx.config.batch_size:
            yield batch, scenes
            batch, scenes = [], 0
    if batch:
        yield batch, scenes


def _main_configs(config: AnalysisConfig) -> list[CamConfig]:
    """Every method and the baseline at layer4 and Grad-CAM at every chosen layer: all served by one forward and one
    backward."""
    configs = [CamConfig(m, "layer4") for m in config.methods]
    if BASELINE not in config.methods:
        configs.append(CamConfig(BASELINE, "layer4"))
    configs += [CamConfig("gradcam", layer) for layer in config.layers if layer != "layer4"]
    if "layer4" in config.layers and "gradcam" not in config.methods:
        configs.append(CamConfig("gradcam", "layer4"))
    return configs


def _choose_threshold(ctx: _Context) -> dict:
    """The IoU threshold that maximises the mean IoU of Grad-CAM at layer4 over every model on the val scenes."""
    config = ctx.config
    if config.threshold is not None:
        ctx.threshold = config.threshold
        return {"value": config.threshold, "chosen_on": "given on the command line"}
    gradcam = CamConfig("gradcam", "layer4")
    rows = []
    with ctx.bar(config.val, "val: IoU threshold") as bar:
        for items, scenes in _batches("val", config.val, ctx):
            x = torch.stack([it.tensor for it in items])
            targets = [it.target for it in items]
            masks = np.stack([it.own for it in items])
            for explainer in ctx.explainers.values():
                maps = explain_batch(explainer, x, targets, [gradcam]).maps[gradcam.key]
                rows.append(iou_curve(maps, masks, THRESHOLD_GRID))
            bar.update(scenes)
    ctx.threshold, means = choose_threshold(np.concatenate(rows), THRESHOLD_GRID)
    return {
        "value": ctx.threshold,
        "chosen_on": f"val, {config.val} scenes: the highest mean IoU of Grad-CAM at layer4 over every model",
        "grid": list(THRESHOLD_GRID),
        "mean_iou": np.round(means, 4).tolist(),
    }


def _localise(ctx: _Context, split: str, count: int) -> None:
    """Accuracy and localisation of every config on ``count`` scenes of ``split``; the attention read-out on test."""
    config = ctx.config
    configs = _main_configs(config)
    records = ctx.records[split]
    faith_keys = [CamConfig(m, "layer4").key for m in config.methods]
    position = 0
    with ctx.bar(count, split) as bar, _numpy_seeded(config.seed, *split.encode()):
        for items, scenes in _batches(split, count, ctx):
            x = torch.stack([it.tensor for it in items])
            targets = np.array([it.target for it in items])
            own = np.stack([it.own for it in items])
            own_distance = np.stack([it.own_distance for it in items])
            pairs = items[0].other is not None
            if pairs:
                other = np.stack([it.other for it in items])
                other_distance = np.stack([it.other_distance for it in items])
            ctx.area[split].extend(area_share(own).tolist())
            for variant, explainer in ctx.explainers.items():
                out = explain_batch(explainer, x, targets.tolist(), configs)
                if pairs:
                    top2 = out.logits.topk(2, dim=1).indices.numpy()
                    records.add("top2", variant, "", per_scene((top2 == targets[:, None]).any(axis=1)))
                else:
                    records.add("accuracy", variant, "", out.logits.argmax(dim=1).numpy() == targets)
                for key, maps in out.maps.items():
                    values = {
                        "pointing": pointing_hits(maps, own_distance, config.tolerance),
                        "energy": energy_in_mask(maps, own),
                        "iou": mask_iou(maps, own, ctx.threshold),
                    }
                    if pairs:
                        values["pointing_other"] = pointing_hits(maps, other_distance, config.tolerance)
                        values["energy_other"] = energy_in_mask(maps, other)
                    for metric, per_cam in values.items():
                        records.add(metric, variant, key, per_scene(per_cam) if pairs else per_cam)
                if split == "test":
                    _read_attention(ctx, variant, out, targets, own)
                    probabilities = target_probability(out.logits, torch.from_numpy(targets)).numpy()
                    for b in range(len(items)):
                        if position + b < config.faithfulness:
                            ctx.faith_maps[position + b, variant] = np.stack([out.maps[k][b] for k in faith_keys])
                            ctx.faith_probability[position + b, variant] = float(probabilities[b])
            if split == "test":
                ctx.faith_items.extend(items[: max(0, config.faithfulness - position)])
            position += len(items)
            bar.update(scenes)


@contextlib.contextmanager
def _numpy_seeded(*seed: int):
    """numpy's global generator seeded for the block, then put back: RandomCAM (pytorch-grad-cam's class) draws its
    channel weights from it, and a run must give the same numbers every time."""
    state = np.random.get_state()
    np.random.seed(list(seed))
    try:
        yield
    finally:
        np.random.set_state(state)


def _read_attention(ctx: _Context, variant: str, out: BatchPass, targets: np.ndarray, own: np.ndarray) -> None:
    if not out.channel:
        return
    ctx.excitation.setdefault(variant, ExcitationStats(len(ctx.model_set.classes))).add(out.channel, targets)
    if not out.spatial:
        return
    masks = torch.from_numpy(own.astype(np.float32))[:, None]
    for block, spatial in out.spatial.items():
        share = F.adaptive_avg_pool2d(masks, spatial.shape[-2:])[:, 0].numpy().astype(np.float64)  # area per cell
        weights = spatial.astype(np.float64)
        stats = ctx.spatial[variant][block]
        stats["energy"].extend(energy_in_mask(weights, share).tolist())
        stats["chance"].extend(area_share(share).tolist())
        inside = (weights * share).sum(axis=(1, 2)) / np.maximum(share.sum(axis=(1, 2)), 1e-9)
        outside = (weights * (1 - share)).sum(axis=(1, 2)) / np.maximum((1 - share).sum(axis=(1, 2)), 1e-9)
        stats["inside"].extend(inside.tolist())
        stats["outside"].extend(outside.tolist())


def _scorecam(ctx: _Context) -> None:
    """Score-CAM at layer4 on the first test scenes, with Grad-CAM's values on the same scenes beside it."""
    config = ctx.config
    scorecam = CamConfig("scorecam", "layer4")
    records = ctx.records["scorecam"]
    with ctx.bar(config.scorecam * len(ctx.explainers), "Score-CAM") as bar:
        for index in range(config.scorecam):
            (item,) = scene_items("test", index, ctx.model_set.classes, ctx.model_set.preprocessing)
            for variant, explainer in ctx.explainers.items():
                maps = explain_batch(
                    explainer, item.tensor[None], [item.target], [scorecam], config.scorecam_batch
                ).maps[scorecam.key]
                records.add(
                    "pointing", variant, scorecam.key, pointing_hits(maps, item.own_distance[None], config.tolerance)
                )
                records.add("energy", variant, scorecam.key, energy_in_mask(maps, item.own[None]))
                records.add("iou", variant, scorecam.key, mask_iou(maps, item.own[None], ctx.threshold))
                bar.update(1)
    gradcam = CamConfig("gradcam", "layer4").key
    for metric in LOCALISATION:
        for variant in ctx.explainers:
            same_scenes = ctx.records["test"].get(metric, variant, gradcam)[: config.scorecam]
            if len(same_scenes) == config.scorecam:
                records.add(metric, variant, gradcam, same_scenes)


def check_set(name: str, classes: list[str], models: Iterable[str], variants: Iterable[str] | None = None) -> list[str]:
    """The variants to analyse, in the usual order; one line of error when the set cannot be analysed."""
    if sorted(classes) != sorted(CLASSES):
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise AttnvizError(
            f"model set {name!r} has other classes ({shown}) than attnviz's scenes ({', '.join(CLASSES)}); "
            f"the analysis needs a set trained on them, e.g. --set builtin"
        )
    models = list(models)
    present = [v for v in VARIANTS if v in models]
    if variants:
        missing = [v for v in variants if v not in models]
        if missing:
            raise AttnvizError(f"model set {name!r} has no model {missing[0]!r}; it has {', '.join(present)}")
        present = [v for v in present if v in variants]
    return present


def run_analysis(
    model_set: LoadedSet,
    config: AnalysisConfig | None = None,
    progress: bool = True,
    command: str = "python -m attnviz.analyze",
) -> dict:
    """Measure everything on a loaded model set; returns the JSON-ready result that ``write_report`` writes."""
    config = config or AnalysisConfig()
    config.validate()
    variants = check_set(model_set.name, model_set.classes, model_set.models, config.variants)
    ctx = _context(model_set, config, variants, progress)
    started = time.perf_counter()

    def phase(name: str, fn, *args):
        t0 = time.perf_counter()
        value = fn(*args)
        ctx.timing[name] = round(time.perf_counter() - t0, 1)
        return value

    threshold = phase("val", _choose_threshold, ctx)
    phase("test", _localise, ctx, "test", config.test)
    if config.unseen:
        phase("unseen", _localise, ctx, "unseen", config.unseen)
    if config.pairs:
        phase("pairs", _localise, ctx, "pairs", config.pairs)
    if config.scorecam:
        phase("scorecam", _scorecam, ctx)
    if config.faithfulness:
        phase("faithfulness", measure_faithfulness, ctx)
    result = phase("bootstrap", summarise, ctx, threshold, command)
    for name in SECTIONS:
        result[name] = phase(name, _section(name), ctx)
    result["timing"] = {"total_s": round(time.perf_counter() - started, 1), "phases_s": ctx.timing}
    return result


def _context(model_set: LoadedSet, config: AnalysisConfig, variants: list[str], progress: bool) -> _Context:
    explainers = {v: ModelExplainer(v, model_set.models[v], model_set.classes, model_set.gate_means_loader(v))
                  for v in variants}
    return _Context(model_set, config, explainers, progress)


def _section(name: str):
    if name not in SECTIONS:
        raise AttnvizError(f"unknown analysis section {name!r}; choose from {', '.join(SECTIONS)}")
    return import_module(SECTIONS[name]).run_section


def run_sections(model_set: LoadedSet, result: dict, names: list[str], config: AnalysisConfig | None = None,
                 progress: bool = True) -> dict:
    """Run only the named sections over the models of an earlier analysis and put their results into it."""
    config = config or AnalysisConfig()
    config.validate()
    variants = check_set(model_set.name, model_set.classes, model_set.models, result.get("variants"))
    ctx = _context(model_set, config, variants, progress)
    timing = result.setdefault("timing", {"total_s": 0.0, "phases_s": {}})
    for name in names:
        started = time.perf_counter()
        result[name] = _section(name)(ctx)
        seconds = round(time.perf_counter() - started, 1)
        timing["total_s"] = round(timing["total_s"] - timing["phases_s"].get(name, 0.0) + seconds, 1)
        timing["phases_s"][name] = seconds
    return result
