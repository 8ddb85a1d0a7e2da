"""The measuring phases of a run: the IoU threshold, localisation per split, Score-CAM, and the sections, on the
items of a source (the generated scenes, or a folder of the user's images)."""

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
from attnviz.analysis.engine import Engine, LocalEngine, Unit, plan_units
from attnviz.analysis.faithfulness import Imputer, faithfulness_unit, measure_faithfulness
from attnviz.analysis.items import BatchPass, Item, SceneSource, explain_batch
from attnviz.analysis.knockout import knockout_unit
from attnviz.analysis.sanity import sanity_unit
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
    source: SceneSource  # where the items come from (or a dataset.FolderSource)
    threshold: float = 0.5
    records: dict[str, Records] = field(default_factory=lambda: defaultdict(Records))
    faith_maps: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    faith_items: dict[int, Item] = field(default_factory=dict)  # place among the faithfulness items -> the item
    faith_probability: dict[tuple[int, str], float] = field(default_factory=dict)
    faith_target: dict[tuple[int, str], int] = field(default_factory=dict)  # the class each model's maps explain
    excitation: dict[str, ExcitationStats] = field(default_factory=dict)
    # variant -> block -> statistic -> values, for every model with spatial attention
    spatial: dict[str, dict[str, dict[str, list[float]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    area: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    curves: dict[tuple[str, str, str], list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    timing: dict[str, float] = field(default_factory=dict)
    val_rows: list[np.ndarray] = field(default_factory=list)  # IoU curves of the val scenes, in order
    imputer: Imputer | None = None  # ROAD's imputation processes while the faithfulness phase runs
    # knock-out section: variant -> "trained" or a stage -> (correct, energy in mask) per scene, in order
    knockout: dict[str, dict[str, tuple[list, list]]] = field(default_factory=dict)
    sanity: dict[str, list] = field(default_factory=dict)  # sanity section: variant -> ModelSanity per unit, in order

    def fresh(self, faith_inputs: bool = False) -> _Context:
        """A context for one unit of work: the same models, data and threshold and empty accumulators (``partial``
        takes them out, ``absorb`` adds them to another context); with ``faith_inputs``, this context's maps and
        items of the faithfulness scenes, which a faithfulness unit reads."""
        ctx = _Context(self.model_set, self.config, self.explainers, False, self.source, self.threshold,
                       imputer=self.imputer)
        if faith_inputs:
            ctx.faith_maps, ctx.faith_items = self.faith_maps, self.faith_items
            ctx.faith_probability, ctx.faith_target = self.faith_probability, self.faith_target
        return ctx

    def partial(self) -> dict:
        """What this context measured, as plain picklable values (a Ray worker writes it to the work folder)."""
        return {
            "records": {split: dict(r.values) for split, r in self.records.items()},
            "area": dict(self.area),
            "excitation": dict(self.excitation),
            "spatial": {v: {b: {k: list(x) for k, x in stats.items()} for b, stats in blocks.items()}
                        for v, blocks in self.spatial.items()},
            "curves": dict(self.curves),
            "val_rows": list(self.val_rows),
            "knockout": self.knockout,
            "sanity": self.sanity,
            "faith": {"maps": dict(self.faith_maps), "items": dict(self.faith_items),
                      "probability": dict(self.faith_probability), "target": dict(self.faith_target)},
        }

    def absorb(self, partial: dict) -> None:
        """Add a unit's measurements after those already here (units are absorbed in their order, so the values
        are in the order a single pass over the data gives)."""
        for split, values in partial["records"].items():
            for key, rows in values.items():
                self.records[split].values[key].extend(rows)
        for split, values in partial["area"].items():
            self.area[split].extend(values)
        for variant, stats in partial["excitation"].items():
            if variant in self.excitation:
                self.excitation[variant].merge(stats)
            else:
                self.excitation[variant] = stats
        for variant, blocks in partial["spatial"].items():
            for block, stats in blocks.items():
                for name, values in stats.items():
                    self.spatial[variant][block][name].extend(values)
        for key, rows in partial["curves"].items():
            self.curves[key].extend(rows)
        self.val_rows.extend(partial["val_rows"])
        for variant, found in partial.get("knockout", {}).items():
            for name, (correct, energy) in found.items():
                kept = self.knockout.setdefault(variant, {}).setdefault(name, ([], []))
                kept[0].extend(correct)
                kept[1].extend(energy)
        for variant, parts in partial.get("sanity", {}).items():
            self.sanity.setdefault(variant, []).extend(parts)
        faith = partial["faith"]  # the faithfulness scenes' maps, from the test units
        self.faith_maps.update(faith["maps"])
        self.faith_items.update(faith["items"])
        self.faith_probability.update(faith["probability"])
        self.faith_target.update(faith["target"])

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(
            total=total, desc=desc, unit="scene", disable=not self.progress, file=sys.stderr, dynamic_ncols=True
        )


def _unit_items(ctx: _Context, unit: Unit) -> list[Item]:
    """The CAMs of the unit's scenes (or images), in order."""
    return [item for index in range(unit.start, unit.stop) for item in ctx.source.items(unit.split, index)]


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


def _choose_threshold(ctx: _Context, engine: Engine) -> dict:
    """The IoU threshold that maximises the mean IoU of Grad-CAM at layer4 over every model on the val scenes (a
    folder's held-out images)."""
    config = ctx.config
    if config.threshold is not None:
        ctx.threshold = config.threshold
        return {"value": config.threshold, "chosen_on": "given on the command line"}
    engine.run(ctx, plan_units(ctx.source, "val", "val", config.val, config.batch_size), "val: IoU threshold")
    ctx.threshold, means = choose_threshold(np.concatenate(ctx.val_rows), THRESHOLD_GRID)
    return {
        "value": ctx.threshold,
        "chosen_on": f"{ctx.source.threshold_sample(config.val)}: the highest mean IoU of Grad-CAM at layer4 over "
                     f"every model",
        "grid": list(THRESHOLD_GRID),
        "mean_iou": np.round(means, 4).tolist(),
    }


def _val_unit(ctx: _Context, unit: Unit) -> None:
    """The IoU curves of Grad-CAM at layer4 of every model on the unit's val scenes."""
    gradcam = CamConfig("gradcam", "layer4")
    items = _unit_items(ctx, unit)
    x = torch.stack([it.tensor for it in items])
    targets = [it.target for it in items]
    masks = np.stack([it.own for it in items])
    for explainer in ctx.explainers.values():
        maps = explain_batch(explainer, x, targets, [gradcam]).maps[gradcam.key]
        ctx.val_rows.append(iou_curve(maps, masks, THRESHOLD_GRID))


def _localise(ctx: _Context, engine: Engine, split: str, count: int) -> None:
    """Accuracy and localisation of every config on ``count`` scenes of ``split``; the attention read-out on test."""
    engine.run(ctx, plan_units(ctx.source, "localise", split, count, ctx.config.batch_size), split)


def _localise_unit(ctx: _Context, unit: Unit) -> None:
    """One batch of ``_localise``: its scenes' CAMs through every model."""
    config, split = ctx.config, unit.split
    configs = _main_configs(config)
    records = ctx.records[split]
    faith_keys = [CamConfig(m, "layer4").key for m in config.methods]
    # test position -> its place among the faithfulness items (the first test scenes; a folder's: drawn at random)
    faith = {p: k for k, p in enumerate(ctx.source.sample(config.faithfulness))} if split == "test" else {}
    items = _unit_items(ctx, unit)
    with _numpy_seeded(config.seed, *split.encode(), unit.start):
        x = torch.stack([it.tensor for it in items])
        given = [it.target for it in items]  # None: each model's own top-1
        own = np.stack([it.own for it in items])
        own_distance = np.stack([it.own_distance for it in items])
        pairs = items[0].other is not None
        if pairs:
            other = np.stack([it.other for it in items])
            other_distance = np.stack([it.other_distance for it in items])
        ctx.area[split].extend(area_share(own).tolist())
        for variant, explainer in ctx.explainers.items():
            out = explain_batch(explainer, x, given, configs)
            targets = out.targets
            if pairs:
                top2 = out.logits.topk(2, dim=1).indices.numpy()
                records.add("top2", variant, "", per_scene((top2 == targets[:, None]).any(axis=1)))
            elif not ctx.source.top1:  # accuracy needs each image's true class
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
                    k = faith.get(unit.position + b)
                    if k is not None:
                        ctx.faith_maps[k, variant] = np.stack([out.maps[key][b] for key in faith_keys])
                        ctx.faith_probability[k, variant] = float(probabilities[b])
                        ctx.faith_target[k, variant] = int(targets[b])
    for b, item in enumerate(items):
        if unit.position + b in faith:
            ctx.faith_items[faith[unit.position + b]] = item


@contextlib.contextmanager
def _numpy_seeded(*seed: int):
    """numpy's global generator seeded for the block, then put back: RandomCAM (pytorch-grad-cam's class) draws its
    channel weights from it, and a run must give the same numbers every time, however its units are spread."""
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


def _scorecam(ctx: _Context, engine: Engine) -> None:
    """Score-CAM at layer4 on the first test scenes (a folder's: drawn at random), with Grad-CAM's values on the
    same scenes beside it."""
    positions = ctx.source.sample(ctx.config.scorecam)
    engine.run(ctx, [Unit("scorecam", "test", p, p + 1, p) for p in positions], "Score-CAM")
    gradcam = CamConfig("gradcam", "layer4").key
    for metric in LOCALISATION:
        for variant in ctx.explainers:
            measured = ctx.records["test"].get(metric, variant, gradcam)
            if positions and len(measured) > positions[-1]:
                ctx.records["scorecam"].add(metric, variant, gradcam, measured[positions])


def _scorecam_unit(ctx: _Context, unit: Unit) -> None:
    """Score-CAM of every model on one test scene."""
    scorecam = CamConfig("scorecam", "layer4")
    config, records = ctx.config, ctx.records["scorecam"]
    (item,) = ctx.source.items("test", unit.start)
    for variant, explainer in ctx.explainers.items():
        maps = explain_batch(explainer, item.tensor[None], [item.target], [scorecam], config.scorecam_batch
                             ).maps[scorecam.key]
        records.add("pointing", variant, scorecam.key, pointing_hits(maps, item.own_distance[None], config.tolerance))
        records.add("energy", variant, scorecam.key, energy_in_mask(maps, item.own[None]))
        records.add("iou", variant, scorecam.key, mask_iou(maps, item.own[None], ctx.threshold))


UNIT_RUNNERS = {"val": _val_unit, "localise": _localise_unit, "scorecam": _scorecam_unit,
                "faithfulness": faithfulness_unit, "knockout": knockout_unit, "sanity": sanity_unit}


def run_unit(ctx: _Context, unit: Unit) -> None:
    """Measure one unit into ``ctx`` (a fresh context: ``_Context.fresh``)."""
    UNIT_RUNNERS[unit.phase](ctx, unit)


def check_set(name: str, classes: list[str], models: Iterable[str], variants: Iterable[str] | None = None,
              scenes: bool = True) -> list[str]:
    """The variants to analyse, in the usual order; one line of error when the set cannot be analysed (on the
    scenes it must know their classes; on a folder of the user's images, ``scenes=False``, any set can)."""
    if scenes and sorted(classes) != sorted(CLASSES):
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise AttnvizError(
            f"model set {name!r} has other classes ({shown}) than attnviz's scenes ({', '.join(CLASSES)}); "
            f"the analysis needs a set trained on them, e.g. --set builtin, or your own images with masks "
            f"(--images DIR --masks DIR)"
        )
    models = list(models)
    present = [v for v in VARIANTS if v in models]
    if variants:
        missing = [v for v in variants if v not in models]
        if missing:
            raise AttnvizError(f"model set {name!r} has no model {missing[0]!r}; it has {', '.join(present)}")
        present = [v for v in present if v in variants]
    return present


def skipped_parts(source, config: AnalysisConfig) -> dict[str, str]:
    """The parts of the analysis that cannot run on ``source``'s items (e.g. the scene-only splits on a folder of
    images, or a section that needs true classes), each with the reason: the report and the command say so."""
    skipped = dict(source.skipped_parts(config))
    for name, module in SECTIONS.items():
        reason = getattr(import_module(module), "skip_reason", lambda source, config: None)(source, config)
        if reason:
            skipped[name] = reason
    return skipped


def run_analysis(
    model_set: LoadedSet,
    config: AnalysisConfig | None = None,
    progress: bool = True,
    command: str = "python -m attnviz.analyze",
    source=None,
    engine: Engine | None = None,
) -> dict:
    """Measure everything on a loaded model set; returns the JSON-ready result that ``write_report`` writes.
    ``source``: where the items come from, the generated scenes by default (``SceneSource``) or a folder of the
    user's images (``attnviz.analysis.dataset.FolderSource``)."""
    config = config or AnalysisConfig()
    config.validate()
    source = source or SceneSource(model_set.classes, model_set.preprocessing)
    variants = check_set(model_set.name, model_set.classes, model_set.models, config.variants,
                         scenes=source.kind == "scenes")
    ctx = _context(model_set, config, variants, progress, source)
    skipped = skipped_parts(source, config)
    started = time.perf_counter()

    def phase(name: str, fn, *args):
        t0 = time.perf_counter()
        value = fn(*args)
        ctx.timing[name] = round(time.perf_counter() - t0, 1)
        return value

    engine = engine or LocalEngine()
    threshold = phase("val", _choose_threshold, ctx, engine)
    phase("test", _localise, ctx, engine, "test", config.test)
    if config.unseen and "unseen" not in skipped:
        phase("unseen", _localise, ctx, engine, "unseen", config.unseen)
    if config.pairs and "pairs" not in skipped:
        phase("pairs", _localise, ctx, engine, "pairs", config.pairs)
    if config.scorecam:
        phase("scorecam", _scorecam, ctx, engine)
    if config.faithfulness:
        phase("faithfulness", measure_faithfulness, ctx, engine)
    result = phase("bootstrap", summarise, ctx, threshold, command)
    for name in SECTIONS:
        result[name] = phase(name, _section(name), ctx, engine)
    if skipped:
        result["skipped"] = skipped
    result["timing"] = {"total_s": round(time.perf_counter() - started, 1), "phases_s": ctx.timing}
    return result


def _context(model_set: LoadedSet, config: AnalysisConfig, variants: list[str], progress: bool, source) -> _Context:
    explainers = {v: ModelExplainer(v, model_set.models[v], model_set.classes, model_set.gate_means_loader(v))
                  for v in variants}
    return _Context(model_set, config, explainers, progress, source)


def _section(name: str):
    if name not in SECTIONS:
        raise AttnvizError(f"unknown analysis section {name!r}; choose from {', '.join(SECTIONS)}")
    return import_module(SECTIONS[name]).run_section


def run_sections(model_set: LoadedSet, result: dict, names: list[str], config: AnalysisConfig | None = None,
                 progress: bool = True, source=None) -> dict:
    """Run only the named sections over the models of an earlier analysis and put their results into it
    (``source``: as for ``run_analysis``; the same data as that analysis')."""
    config = config or AnalysisConfig()
    config.validate()
    source = source or SceneSource(model_set.classes, model_set.preprocessing)
    variants = check_set(model_set.name, model_set.classes, model_set.models, result.get("variants"),
                         scenes=source.kind == "scenes")
    ctx = _context(model_set, config, variants, progress, source)
    timing = result.setdefault("timing", {"total_s": 0.0, "phases_s": {}})
    skipped = skipped_parts(source, config)
    for name in names:
        started = time.perf_counter()
        result[name] = _section(name)(ctx)
        if name in skipped:
            result.setdefault("skipped", {})[name] = skipped[name]
        else:
            result.get("skipped", {}).pop(name, None)
        seconds = round(time.perf_counter() - started, 1)
        timing["total_s"] = round(timing["total_s"] - timing["phases_s"].get(name, 0.0) + seconds, 1)
        timing["phases_s"][name] = seconds
    return result
