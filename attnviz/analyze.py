"""Measure the comparison: localisation and faithfulness per model and CAM method, and the attention read-out.

The CBAM paper shows pictures in which CBAM's Grad-CAM covers the object
better than ResNet50's and SE's. attnviz's scenes come with true masks, so
here it is measured, with paired bootstrap intervals over the same scenes so
that a real difference between the models can be told from noise:

* top-1 accuracy, the pointing game, energy in the mask and mask IoU for every
  model x CAM method at layer4 and for Grad-CAM at every layer, on the test,
  unseen-glyph and two-object scenes (each CAM explains the true class), with
  RandomCAM at layer4 as the baseline and the masks' area share as chance;
* faithfulness (deletion / insertion AUC against a blurred image, ROAD) on the
  first scenes of the test sample; Score-CAM, which needs one forward pass per
  channel of layer4, only on the first test scenes when asked for (--scorecam N);
* the SE paper's excitation analysis for SE's and CBAM's channel gates, and
  how much CBAM's spatial attention at each block lies on the object.

The scenes are regenerated from their seed (``make_scene(0, split, index)``, the
built-in dataset's seed); nothing is read from data/.

    python -m attnviz.analyze                          # the default set; about half an hour on 2 CPU cores
    python -m attnviz.analyze --set NAME --quick       # about a minute: a handful of scenes, to try it out

Results go to ``<weights dir>/<set>/analysis/``: analysis.json, analysis.md and PNG plots,
which the app's Analysis tab shows. A quick run, or one that measures less than the default, goes to
``analysis-quick/`` or ``analysis-partial/`` beside it unless ``--out`` names a folder: it never replaces
the shipped results by accident.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from attnviz.analysis_sanity import SANITY_METHODS, SANITY_SCENES
from attnviz.attention import family
from attnviz.errors import AttnvizError
from attnviz.explainer import CAM_METHODS, ModelExplainer
from attnviz.images import preprocess
from attnviz.knockout import KNOCKOUT_VALUES
from attnviz.metrics import (
    POINTING_TOLERANCE,
    THRESHOLD_GRID,
    area_share,
    choose_threshold,
    curve_auc,
    deletion_insertion,
    distance_to_mask,
    energy_in_mask,
    gaussian_blur,
    iou_curve,
    mask_iou,
    paired_bootstrap,
    pointing_hits,
    road_impute,
    road_jobs,
    road_scores,
    road_worker_start,
    target_probability,
)
from attnviz.models import TARGET_LAYERS, VARIANTS
from attnviz.sanity import check_methods
from attnviz.scene_lab import view_mask as _view_mask
from attnviz.scenes import CLASSES, make_scene
from attnviz.weights import LoadedSet, Manifest, Preprocessing, load_model_set

FORMAT = 2  # 2: "spatial" per model (format 1 had one, CBAM's); read_result upgrades format 1
ANALYSIS_DIR = "analysis"
QUICK_DIR = "analysis-quick"  # --quick writes here unless --out says otherwise: never over analysis/
PARTIAL_DIR = "analysis-partial"  # likewise any run that measures less than the default
JSON_NAME = "analysis.json"
MARKDOWN_NAME = "analysis.md"
SCENE_SEED = 0  # the built-in dataset's seed (python -m attnviz.scenes generate, attnviz.train)
# The methods the shipped analysis was run with; methods added to the table since (Grad-CAM element-wise,
# KPCA-CAM, FEM) join the default when the analysis is re-run for them (``--methods`` adds them to any run).
DEFAULT_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam", "eigencam")
# Measured for localisation at layer4 in every run beside the methods (not for faithfulness, unless --methods names
# it): what a map of random channel weights on the real activations scores, a level above the area share's chance.
BASELINE = "randomcam"
PROFILE_CHANNELS = 64  # channels shown per block in the excitation figure
PROFILE_CLASSES = ("dog", "fish", "aeroplane", "flower")  # four classes far apart, like the SE paper's figure

# name -> (label, higher is better, shown in percent)
METRICS = {
    "accuracy": ("top-1 accuracy", True, True),
    "pointing": ("pointing game", True, True),
    "energy": ("energy in mask", True, False),
    "iou": ("mask IoU", True, False),
    "deletion": ("deletion AUC", False, False),
    "insertion": ("insertion AUC", True, False),
    "road_morf": ("ROAD most relevant first", False, False),
    "road_lerf": ("ROAD least relevant first", True, False),
    "road_combined": ("ROAD combined", True, False),
    "top2": ("classes found in the top-2", True, True),
}
LOCALISATION = ("pointing", "energy", "iou")
FAITHFULNESS = ("deletion", "insertion", "road_morf", "road_lerf", "road_combined")
PLOTS_BEFORE_EXCITATION = ("localisation", "layers", "pairs", "faithfulness", "curves")
PLOTS_AFTER_EXCITATION = ("specificity", "spatial", "knockout", "sanity", "sanity_independent")
SECTION_PLOTS = {"sanity": "sanity", "sanity_independent": "sanity"}  # plot -> the section it needs in the result
# Sections that can also run on their own over an existing analysis (--sections): name -> its function of the
# run's context. Each writes result[name]; the report reads it.
SECTIONS = ("knockout", "sanity")


def plot_files(result: dict) -> dict[str, str]:
    """Plot name -> file name, in the order the report shows them: one excitation plot per model that has
    channel attention (``excitation_<variant>``), the others once."""
    names = [*PLOTS_BEFORE_EXCITATION, *(f"excitation_{v}" for v in result.get("excitation", {})),
             *(n for n in PLOTS_AFTER_EXCITATION if n not in SECTION_PLOTS or result.get(SECTION_PLOTS[n]))]
    return {name: f"{name}.png" for name in names}


@dataclass
class AnalysisConfig:
    """What to measure on how many scenes; the defaults make the full run about half an hour
    on 2 CPU cores (28.5 min measured for the built-in set)."""

    val: int = 120  # val scenes that choose the IoU threshold
    test: int = 400
    unseen: int = 120
    pairs: int = 60  # two-object scenes; each gives two CAMs, one per class
    # Measured on 2 idle cores (ResNet50 and SE): about 0.4 s per scene and model for every CAM and its
    # localisation, 13 s per scene and model for the faithfulness passes, 200 s for Score-CAM.
    faithfulness: int = 24  # the first test scenes also get deletion / insertion and ROAD
    scorecam: int = 0  # the first test scenes also get Score-CAM at layer4 (2048 forward passes per model)
    methods: tuple[str, ...] = DEFAULT_METHODS  # at layer4
    layers: tuple[str, ...] = TARGET_LAYERS  # Grad-CAM at each
    steps: int = 10  # deletion / insertion: 10 % of the pixels per step
    blur_sigma: float = 10.0  # px at 224 (scaled to the input size): the baseline of deletion / insertion
    road_percentiles: tuple[int, ...] = (20, 40, 60, 80)
    # ROAD's imputation (a sparse solve, about 0.6 s of CPU per percentile and order) costs several times the
    # deletion / insertion passes: by default only Grad-CAM gets it, which buys more faithfulness scenes.
    road_methods: tuple[str, ...] = ("gradcam",)
    tolerance: float = POINTING_TOLERANCE  # px of the model's input
    threshold: float | None = None  # mask IoU threshold; None: chosen on the val scenes
    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0  # bootstrap, tie-breaks and ROAD noise
    batch_size: int = 16
    scorecam_batch: int = 64
    workers: int = 2  # processes for ROAD's imputation (scipy, one core each); 0 runs it inline
    variants: tuple[str, ...] | None = None  # None: every model of the set
    knockout_scenes: int = 200  # test scenes of the knock-out section (every stage of every gated model)
    knockout_value: str = "mean"  # what a switched-off gate outputs there: its mean, or 1 ("identity")
    sanity_scenes: int = SANITY_SCENES  # test scenes of the sanity section (randomisation test, every model)
    sanity_methods: tuple[str, ...] = SANITY_METHODS  # CAM methods it checks, at layer4

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in CAM_METHODS or CAM_METHODS[m].kind == "perturbation"]
        if unknown:
            choices = ", ".join(k for k, m in CAM_METHODS.items() if m.kind != "perturbation")
            raise AttnvizError(
                f"unknown CAM method {unknown[0]!r} for --methods; choose from {choices} "
                f"(Score-CAM has its own --scorecam count)"
            )
        if not self.methods:
            raise AttnvizError("--methods needs at least one CAM method")
        bad_layers = [layer for layer in self.layers if layer not in TARGET_LAYERS]
        if bad_layers:
            raise AttnvizError(f"unknown layer {bad_layers[0]!r}; choose from {', '.join(TARGET_LAYERS)}")
        counts = {
            "val": self.val,
            "test": self.test,
            "unseen": self.unseen,
            "pairs": self.pairs,
            "faithfulness": self.faithfulness,
            "scorecam": self.scorecam,
        }
        counts["knockout-scenes"] = self.knockout_scenes
        counts["sanity-scenes"] = self.sanity_scenes
        check_methods(self.sanity_methods)
        if self.knockout_value not in KNOCKOUT_VALUES:
            raise AttnvizError(f"--knockout-value must be one of {', '.join(KNOCKOUT_VALUES)}")
        negative = [k for k, v in counts.items() if v < 0]
        if negative:
            raise AttnvizError(f"--{negative[0]} must be 0 or more")
        if self.test < 1:
            raise AttnvizError("--test must be at least 1: the test scenes are the main sample")
        if self.faithfulness > self.test or self.scorecam > self.test:
            raise AttnvizError("--faithfulness and --scorecam take the first test scenes: keep them at most --test")
        if self.threshold is None and self.val < 1:
            raise AttnvizError("choosing the IoU threshold needs val scenes: give --val 1 or more, or --threshold")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise AttnvizError("--threshold must be in (0, 1]")
        if self.steps < 2:
            raise AttnvizError("--steps must be at least 2")
        outside = [m for m in self.road_methods if m not in self.methods]
        if outside:
            raise AttnvizError(f"--road-methods must be among --methods; {outside[0]!r} is not")
        if not self.road_percentiles or any(not 0 < p < 100 for p in self.road_percentiles):
            raise AttnvizError("--road-percentiles must lie between 0 and 100")
        if not 0 < self.confidence < 1 or self.resamples < 10:
            raise AttnvizError("--confidence must be in (0, 1) and --resamples at least 10")
        if self.batch_size < 1 or self.scorecam_batch < 1 or self.workers < 0:
            raise AttnvizError("--batch-size and --scorecam-batch must be at least 1, --workers 0 or more")


QUICK = {
    "val": 6,
    "test": 6,
    "unseen": 3,
    "pairs": 3,
    "faithfulness": 2,
    "scorecam": 0,
    "knockout_scenes": 3,
    "sanity_scenes": 2,
    "steps": 4,
    "resamples": 200,
    "workers": 0,
}


# --------------------------------------------------------------------------- scenes as the models see them


@dataclass
class Item:
    """One CAM to measure: a scene as the model set sees it, the class explained and its object's mask."""

    split: str
    scene: int
    target: int  # class index of the model set
    tensor: torch.Tensor  # (3, S, S)
    own: np.ndarray  # (S, S) bool: the target's object
    other: np.ndarray | None  # (S, S) bool: the other object of a two-object scene
    own_distance: np.ndarray = field(repr=False, default=None)
    other_distance: np.ndarray | None = field(repr=False, default=None)


def scene_items(split: str, index: int, classes: list[str], preprocessing: Preprocessing) -> list[Item]:
    """The CAMs of one scene: one for a single object, one per class for a two-object scene."""
    scene = make_scene(SCENE_SEED, split, index)
    tensor = preprocess(Image.fromarray(scene.image), preprocessing).tensor[0]
    masks = [_view_mask(m, preprocessing) for m in scene.masks]
    distances = [distance_to_mask(m) for m in masks]
    items = []
    for i, label in enumerate(scene.labels):
        j = 1 - i if len(masks) == 2 else None
        items.append(
            Item(
                split=split,
                scene=index,
                target=classes.index(CLASSES[label]),
                tensor=tensor,
                own=masks[i],
                other=None if j is None else masks[j],
                own_distance=distances[i],
                other_distance=None if j is None else distances[j],
            )
        )
    return items


# --------------------------------------------------------------------------- one pass of one model


@dataclass(frozen=True)
class CamConfig:
    method: str
    layer: str

    @property
    def key(self) -> str:
        return f"{self.method}@{self.layer}"

    @property
    def label(self) -> str:
        label = CAM_METHODS[self.method].label
        return label if self.layer == "layer4" else f"{label} ({self.layer})"

    @classmethod
    def parse(cls, key: str) -> CamConfig:
        method, layer = key.split("@")
        return cls(method, layer)


@dataclass
class BatchPass:
    """What one forward (and one backward) of a batch gave: logits, a map per CAM config, the attention records."""

    logits: torch.Tensor  # (B, classes)
    maps: dict[str, np.ndarray]  # config key -> (B, S, S) in [0, 1]
    channel: dict[str, np.ndarray]  # block -> (B, C): the records of kind "channel"
    spatial: dict[str, np.ndarray]  # block -> (B, h, w): the records of kind "spatial"


def explain_batch(
    explainer: ModelExplainer, x: torch.Tensor, targets: list[int], configs: list[CamConfig], scorecam_batch: int = 64
) -> BatchPass:
    """One pass of the batch through the capture core (``ModelExplainer.explain_batch``), keyed by config."""
    out = explainer.explain_batch(x, list(targets), [(c.method, c.layer) for c in configs], scorecam_batch)
    return BatchPass(logits=out.logits, maps={c.key: out.maps[c.method, c.layer] for c in configs},
                     channel=out.of_kind("channel"), spatial=out.of_kind("spatial"))


# --------------------------------------------------------------------------- accumulators


class Records:
    """Per-item values, appended batch by batch: (metric, variant, config) -> values in item order."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], list[float]] = defaultdict(list)

    def add(self, metric: str, variant: str, config: str, values) -> None:
        self.values[metric, variant, config].extend(np.asarray(values, np.float64).ravel().tolist())

    def get(self, metric: str, variant: str, config: str) -> np.ndarray:
        return np.asarray(self.values.get((metric, variant, config), []), np.float64)

    def configs(self, metric: str) -> list[str]:
        return list(dict.fromkeys(c for m, _, c in self.values if m == metric))


class ExcitationStats:
    """Per block: count, sum and sum of squares of the channel weights per class, for the SE paper's analysis."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.count = np.zeros(classes)
        self.sums: dict[str, np.ndarray] = {}
        self.squares: dict[str, np.ndarray] = {}

    def add(self, channel: dict[str, np.ndarray], targets: np.ndarray) -> None:
        np.add.at(self.count, targets, 1)
        for block, weights in channel.items():
            weights = weights.astype(np.float64)
            if block not in self.sums:
                self.sums[block] = np.zeros((self.classes, weights.shape[1]))
                self.squares[block] = np.zeros((self.classes, weights.shape[1]))
            np.add.at(self.sums[block], targets, weights)
            np.add.at(self.squares[block], targets, weights**2)

    def summary(self, class_names: list[str], profile_blocks: list[str]) -> dict:
        present = self.count > 0
        total = self.count.sum()
        # eta squared of pure noise is about (classes - 1) / (images - 1): the floor a small sample cannot go below
        chance = (present.sum() - 1) / (total - 1) if total > 1 else 1.0
        out: dict = {
            "blocks": list(self.sums),
            "channels": [],
            "class_specificity": [],
            "spread": [],
            "mean": [],
            "near_one": [],
            "chance_specificity": float(chance),
            "profiles": {},
        }
        for block, sums in self.sums.items():
            class_means = sums[present] / self.count[present, None]
            overall = sums.sum(axis=0) / total
            between = (self.count[present, None] * (class_means - overall) ** 2).sum(axis=0)
            within = np.maximum(self.squares[block][present] - self.count[present, None] * class_means**2, 0).sum(0)
            variance = between.sum() + within.sum()
            out["channels"].append(int(sums.shape[1]))
            # eta squared: the share of the excitation's variance across images that the class explains
            out["class_specificity"].append(float(between.sum() / variance) if variance > 0 else 0.0)
            out["spread"].append(float(class_means.std(axis=0).mean()))
            out["mean"].append(float(overall.mean()))
            out["near_one"].append(float((overall > 0.9).mean()))
            if block in profile_blocks:
                names = [n for n, p in zip(class_names, present, strict=True) if p]
                out["profiles"][block] = {
                    "classes": {
                        n: np.round(m[:PROFILE_CHANNELS], 4).tolist() for n, m in zip(names, class_means, strict=True)
                    },
                    "all": np.round(overall[:PROFILE_CHANNELS], 4).tolist(),
                }
        return out


def profile_blocks(blocks: list[str]) -> list[str]:
    """The SE paper's blocks: the last of each early stage and every block of the last (SE_2_3 ... SE_5_3)."""
    stages: dict[str, list[str]] = defaultdict(list)
    for block in blocks:
        stages[block.split(".")[0]].append(block)
    names = list(stages)
    return [stages[s][-1] for s in names[:-1]] + (stages[names[-1]] if names else [])


# --------------------------------------------------------------------------- the run


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
                    records.add("top2", variant, "", _per_scene((top2 == targets[:, None]).any(axis=1)))
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
                        records.add(metric, variant, key, _per_scene(per_cam) if pairs else per_cam)
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


def _per_scene(values: np.ndarray) -> np.ndarray:
    """A two-object scene's two CAMs averaged: the bootstrap resamples scenes, not CAMs of one scene."""
    return np.asarray(values, np.float64).reshape(-1, 2).mean(axis=1)


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


class _Imputer:
    """Runs ROAD's imputation jobs inline or in worker processes (scipy's solver uses one core)."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=road_worker_start
            )

    def submit(self, jobs):
        """Start the jobs (in the background when there are workers); ``list()`` the result to wait for them."""
        if self.pool is None:
            return (road_impute(job) for job in jobs)
        return self.pool.map(road_impute, jobs, chunksize=4)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _faithfulness(ctx: _Context) -> None:
    """Deletion / insertion curves and ROAD of every layer4 method on the first test scenes."""
    config = ctx.config
    keys = [CamConfig(m, "layer4").key for m in config.methods]
    road_index = [k for k, m in enumerate(config.methods) if m in config.road_methods]
    road_keys = [keys[k] for k in road_index]
    records = ctx.records["faithfulness"]
    curves = ctx.curves
    sigma = config.blur_sigma * ctx.model_set.preprocessing.crop / 224
    imputer = _Imputer(config.workers)
    try:
        with ctx.bar(len(ctx.faith_items), "faithfulness") as bar:
            for i, item in enumerate(ctx.faith_items):
                baseline = gaussian_blur(item.tensor[None], sigma)[0]
                tiebreak = np.random.default_rng([config.seed, 1, i]).permutation(item.own.size)
                pending = {}
                for v, variant in enumerate(ctx.explainers):  # ROAD's imputation runs while the curves are scored
                    seed = int(np.random.default_rng([config.seed, 2, i, v]).integers(2**31))
                    maps = np.asarray(ctx.faith_maps[i, variant])[road_index]
                    jobs = road_jobs(item.tensor, maps, config.road_percentiles, seed) if road_index else []
                    pending[variant] = imputer.submit(jobs)
                for variant, explainer in ctx.explainers.items():
                    model = explainer.model
                    original = ctx.faith_probability[i, variant]
                    with torch.no_grad():
                        blurred = float(target_probability(model(baseline[None]), torch.tensor([item.target]))[0])
                    found = deletion_insertion(
                        model,
                        item.tensor,
                        baseline,
                        ctx.faith_maps[i, variant],
                        item.target,
                        config.steps,
                        config.batch_size,
                        tiebreak,
                        (original, blurred),
                    )
                    for k, key in enumerate(keys):
                        curves[key, variant, "deletion"].append(found.deletion[k])
                        curves[key, variant, "insertion"].append(found.insertion[k])
                        records.add("deletion", variant, key, curve_auc(found.deletion[k]))
                        records.add("insertion", variant, key, curve_auc(found.insertion[k]))
                for variant, explainer in ctx.explainers.items():
                    imputed = list(pending.pop(variant))
                    if not road_keys:
                        continue
                    scores = road_scores(
                        explainer.model,
                        ctx.faith_probability[i, variant],
                        item.target,
                        imputed,
                        len(road_keys),
                        len(config.road_percentiles),
                        config.batch_size,
                    )
                    for k, key in enumerate(road_keys):
                        records.add("road_morf", variant, key, scores.most_relevant_first[k])
                        records.add("road_lerf", variant, key, scores.least_relevant_first[k])
                        records.add("road_combined", variant, key, scores.combined[k])
                bar.update(1)
    finally:
        imputer.close()


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
        phase("faithfulness", _faithfulness, ctx)
    result = phase("bootstrap", _summarise, ctx, threshold, command)
    for name in SECTIONS:
        result[name] = phase(name, _section(name), ctx)
    result["timing"] = {"total_s": round(time.perf_counter() - started, 1), "phases_s": ctx.timing}
    return result


def _context(model_set: LoadedSet, config: AnalysisConfig, variants: list[str], progress: bool) -> _Context:
    explainers = {v: ModelExplainer(v, model_set.models[v], model_set.classes, model_set.gate_means_loader(v))
                  for v in variants}
    return _Context(model_set, config, explainers, progress)


def _section(name: str):
    if name == "knockout":
        from attnviz.analysis_knockout import run_section

        return run_section
    if name == "sanity":
        from attnviz.analysis_sanity import run_section as run_sanity

        return run_sanity
    raise AttnvizError(f"unknown analysis section {name!r}; choose from {', '.join(SECTIONS)}")


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


# --------------------------------------------------------------------------- summary (JSON-ready)


def _compare(values: dict[str, np.ndarray], config: AnalysisConfig) -> dict:
    boot = paired_bootstrap(values, config.resamples, config.confidence, config.seed)
    return {
        "n": boot.n,
        "models": {k: iv.to_dict() for k, iv in boot.means.items()},
        "differences": {
            f"{b}-{a}": {**iv.to_dict(), "excludes_zero": iv.excludes_zero} for (a, b), iv in boot.differences.items()
        },
    }


def _group(records: Records, metric: str, variants: list[str], config: AnalysisConfig) -> dict:
    return {
        key: _compare({v: records.get(metric, v, key) for v in variants}, config)
        for key in records.configs(metric)
        if key
    }


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("grad-cam", "numpy", "scipy"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


def _spatial_summary(blocks: dict[str, dict[str, list[float]]], config: AnalysisConfig) -> dict:
    """One model's spatial attention against the true masks, block by block, with paired intervals."""
    spatial: dict = {"blocks": list(blocks), "energy": [], "chance": [], "energy_minus_chance": [],
                     "inside_outside_ratio": []}
    for stats in blocks.values():
        boot = paired_bootstrap(
            {"chance": np.array(stats["chance"]), "energy": np.array(stats["energy"])},
            config.resamples,
            config.confidence,
            config.seed,
        )
        spatial["energy"].append(boot.means["energy"].to_dict())
        spatial["chance"].append(boot.means["chance"].to_dict())
        iv = boot.differences["chance", "energy"]
        spatial["energy_minus_chance"].append({**iv.to_dict(), "excludes_zero": iv.excludes_zero})
        ratio = np.mean(stats["inside"]) / max(np.mean(stats["outside"]), 1e-9)
        spatial["inside_outside_ratio"].append(round(float(ratio), 4))
    return spatial


def _summarise(ctx: _Context, threshold: dict, command: str) -> dict:
    config = ctx.config
    variants = list(ctx.explainers)
    records = ctx.records
    result: dict = {
        "format": FORMAT,
        "set": ctx.model_set.name,
        "variants": variants,
        "titles": {v: family(v).title for v in variants},
        "classes": ctx.model_set.classes,
        "command": command,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "input_size": ctx.model_set.preprocessing.crop,
        "target": "the true class of each scene; in a two-object scene each of its two classes in turn",
        "samples": {
            "scene_seed": SCENE_SEED,
            "val": config.val if config.threshold is None else 0,
            "test": config.test,
            "unseen": config.unseen,
            "pairs": config.pairs,
            "faithfulness": len(ctx.faith_items),
            "scorecam": config.scorecam,
            "note": "scenes 0..n-1 of each split, regenerated with attnviz.scenes.make_scene(seed, split, index); "
            "faithfulness and Score-CAM use the first test scenes",
        },
        "threshold": threshold,
        "area_share": {split: float(np.mean(values)) for split, values in ctx.area.items() if values},
        "accuracy": {},
        "localisation": {},
        "pairs": {},
        "scorecam": {},
        "faithfulness": {},
        "excitation": {},
        "spatial": {},
        "machine": _machine(),
        "versions": _versions(),
    }
    for split in ("test", "unseen"):
        if split in records:
            result["accuracy"][split] = _compare({v: records[split].get("accuracy", v, "") for v in variants}, config)
            result["localisation"][split] = {m: _group(records[split], m, variants, config) for m in LOCALISATION}
    if "pairs" in records:
        pairs = records["pairs"]
        result["accuracy"]["pairs_top2"] = _compare({v: pairs.get("top2", v, "") for v in variants}, config)
        result["pairs"] = {
            m: _group(pairs, m, variants, config)
            for m in ("pointing", "pointing_other", "energy", "energy_other", "iou")
        }
        own_minus_other: dict = {}
        for metric in ("pointing", "energy"):
            own_minus_other[metric] = {}
            for key in pairs.configs(metric):
                own_minus_other[metric][key] = {}
                for v in variants:
                    boot = paired_bootstrap(
                        {"other": pairs.get(f"{metric}_other", v, key), "own": pairs.get(metric, v, key)},
                        config.resamples,
                        config.confidence,
                        config.seed,
                    )
                    iv = boot.differences["other", "own"]
                    own_minus_other[metric][key][v] = {**iv.to_dict(), "excludes_zero": iv.excludes_zero}
        result["pairs"]["own_minus_other"] = own_minus_other
    if "scorecam" in records:
        result["scorecam"] = {m: _group(records["scorecam"], m, variants, config) for m in LOCALISATION}
    if "faithfulness" in records:
        result["faithfulness"] = {m: _group(records["faithfulness"], m, variants, config) for m in FAITHFULNESS}
        mean_curves: dict = defaultdict(dict)
        for (key, variant, kind), rows in ctx.curves.items():
            mean_curves[key].setdefault(variant, {})[kind] = np.round(np.mean(rows, axis=0), 4).tolist()
        result["faithfulness"]["curves"] = dict(mean_curves)
    for variant, stats in ctx.excitation.items():
        result["excitation"][variant] = stats.summary(ctx.model_set.classes, profile_blocks(list(stats.sums)))
    for variant, blocks in ctx.spatial.items():
        result["spatial"][variant] = _spatial_summary(blocks, config)
    return result


# --------------------------------------------------------------------------- markdown


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
    return {_label(key): (comparison, percent) for key, comparison in group.items()}


def _label(key: str) -> str:
    return CamConfig.parse(key).label


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
    return [[_label(k) for k in members] for members in groups.values() if len(members) > 1]


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
    """analysis.md: how it was made, the headline table, then every table with its intervals."""
    variants, titles = result["variants"], result["titles"]
    config, samples, timing = result["config"], result["samples"], result["timing"]
    machine, versions = result["machine"], result["versions"]
    conf = int(round(config["confidence"] * 100))
    lines = [
        f"# attnviz analysis: model set `{result['set']}`",
        "",
        f"Regenerate with `{result['command']}` (every number and plot here comes from that command).",
        "",
        f"- **Sample** (scenes regenerated from seed {samples['scene_seed']}, the first *n* of each split): "
        f"{samples['val']} val (IoU threshold), {samples['test']} test, {samples['unseen']} unseen-glyph, "
        f"{samples['pairs']} two-object scenes; faithfulness on the first {samples['faithfulness']} test scenes; "
        + (
            f"Score-CAM on the first {samples['scorecam']}."
            if samples["scorecam"]
            else "no Score-CAM (one forward pass per channel of layer4, 2048 per scene and model: "
            "`--scorecam N` adds it on the first N test scenes)."
        ),
        f"- **Target**: {result['target']}. Input {result['input_size']} px.",
        f"- **Time**: {timing['total_s'] / 60:.1f} min in all ("
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing["phases_s"].items())
        + ").",
        f"- **Machine**: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        f"- **Intervals**: {conf} % paired percentile bootstrap over the same scenes ({config['resamples']} "
        f"resamples, seed {config['seed']}); a difference such as CBAM − SE is taken scene by scene and is **bold** "
        f"when its interval excludes 0. A two-object scene counts once (its two CAMs averaged).",
    ]
    lines += _coinciding_note(result) + [""]
    summary = render_summary(result)
    if summary:
        lines += ["## Summary: test scenes, Grad-CAM at layer4", "", summary, ""]

    split_titles = {"test": "test scenes", "unseen": "unseen-glyph scenes (glyphs never seen in training)"}
    for split, title in split_titles.items():
        if split not in result["localisation"]:
            continue
        n = result["accuracy"][split]["n"]
        lines += [f"## Localisation: {title} (n = {n})", ""]
        lines += _comparison_table(
            {"top-1 accuracy (%)": (result["accuracy"][split], True)}, variants, titles, "accuracy"
        )
        lines.append("")
        for metric in LOCALISATION:
            group = result["localisation"][split][metric]
            lines += [_metric_heading(metric, result, split), ""]
            lines += _comparison_table(_method_rows(group, METRICS[metric][2]), variants, titles, "method")
            lines.append("")
    if result["pairs"]:
        pairs = result["pairs"]
        n = result["accuracy"]["pairs_top2"]["n"]
        lines += [
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
            percent = metric.startswith("pointing")
            lines += [f"**{title}**", ""]
            lines += _comparison_table(_method_rows(pairs[metric], percent), variants, titles, "method")
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
                lines.append(
                    f"| {_label(key)} | "
                    + " | ".join(_cell(per_variant[v], percent, signed=True) for v in variants)
                    + " |"
                )
            lines.append("")
    if result["scorecam"]:
        n = samples["scorecam"]
        lines += [
            f"## Score-CAM at layer4 (first {n} test scenes, Grad-CAM on the same scenes)",
            "",
            "Score-CAM runs one forward pass per channel of layer4 (2048 per image and model), so it gets only "
            "a few scenes: read these as examples, not as a measurement.",
            "",
        ]
        for metric in LOCALISATION:
            lines += [_metric_heading(metric, result), ""]
            lines += _comparison_table(
                _method_rows(result["scorecam"][metric], METRICS[metric][2]), variants, titles, "method"
            )
            lines.append("")
    if result["faithfulness"]:
        n = samples["faithfulness"]
        pct = ", ".join(str(p) for p in config["road_percentiles"])
        lines += [
            f"## Faithfulness (first {n} test scenes, layer4)",
            "",
            f"Score: the softmax probability of the true class. Deletion replaces the most relevant pixels "
            f"first by a blurred copy of the image (Gaussian, sigma {config['blur_sigma']:g} px at 224 px), "
            f"insertion puts them first into the blurred copy, in {config['steps']} steps of "
            f"{100 / config['steps']:.0f} % of the pixels; the AUC is the mean probability over the curve. "
            f"ROAD (pytorch-grad-cam's noisy linear imputation) removes {pct} % of the pixels, most relevant "
            f"first (MoRF) or least relevant first (LeRF), and reports the mean change in probability; "
            f"combined = (LeRF − MoRF) / 2; measured for "
            f"{', '.join(CAM_METHODS[m].label for m in config.get('road_methods', config['methods']))}.",
            "",
        ]
        for metric in FAITHFULNESS:
            group = result["faithfulness"].get(metric, {})
            lines += [_metric_heading(metric, result), ""]
            lines += _comparison_table(_method_rows(group, False), variants, titles, "method")
            lines.append("")
    if result["excitation"]:
        lines += [
            "## Excitation (the SE paper's analysis)",
            "",
            f"Channel weights of every attention block on the {samples['test']} test scenes. *class "
            "specificity*: the share of the weights' variance across images that the class explains (eta², "
            "pooled over channels; 0 = the same for every class; about "
            f"{result['excitation'][next(iter(result['excitation']))]['chance_specificity']:.3f} by chance with "
            "this many scenes per class). *spread*: the standard deviation across "
            "classes of each channel's class mean, averaged over channels. *near 1*: share of channels whose "
            "mean weight is above 0.9.",
            "",
        ]
        gated = list(result["excitation"])
        blocks = result["excitation"][gated[0]]["blocks"]
        header = ["block"] + [
            f"{titles[v].replace('ResNet50 + ', '')} {col}"
            for v in gated
            for col in ("specificity", "spread", "mean", "near 1")
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for b, block in enumerate(blocks):
            cells = [block]
            for v in gated:
                ex = result["excitation"][v]
                cells += [
                    f"{ex['class_specificity'][b]:.3f}",
                    f"{ex['spread'][b]:.3f}",
                    f"{ex['mean'][b]:.3f}",
                    f"{ex['near_one'][b]:.2f}",
                ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for variant, sp in result["spatial"].items():
        lines += [
            f"## {titles[variant]}: spatial attention and the object",
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
        lines.append("")
    from attnviz.analysis_knockout import markdown as knockout_markdown

    lines += knockout_markdown(result, titles)
    from attnviz.analysis_sanity import markdown as sanity_markdown

    lines += sanity_markdown(result, titles)
    lines += [
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
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def write_report(result: dict, out: Path) -> list[Path]:
    """Write analysis.json, analysis.md and the plots into ``out``; returns the files written."""
    from attnviz.analysis_plots import draw_plot  # it reads this module's tables: imported when drawing

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
    text = json.dumps(_finite(result), indent=1, ensure_ascii=False, allow_nan=False)
    (out / JSON_NAME).write_text(text + "\n", encoding="utf-8")
    return [out / JSON_NAME, out / MARKDOWN_NAME, *written]


def _finite(value):
    """The result with every NaN or infinity as None, so that analysis.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def read_result(folder: Path) -> dict:
    """The analysis.json of an earlier run."""
    path = Path(folder) / JSON_NAME
    if not path.is_file():
        raise AttnvizError(f"{path} does not exist: run python -m attnviz.analyze first")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AttnvizError(f"{path}: not valid JSON ({exc.msg}); run python -m attnviz.analyze again") from None
    if result.get("format") == 1:
        result = _upgrade_format_1(result)
    if result.get("format") != FORMAT:
        raise AttnvizError(f"{path}: written by another version of attnviz; run python -m attnviz.analyze again")
    return result


def _upgrade_format_1(result: dict) -> dict:
    """Format 1 had one "spatial" section, that of the set's one spatially gated model; format 2 has one per
    model. Everything else is the same."""
    spatial = result.get("spatial") or {}
    gated = [v for v in result.get("variants", []) if "spatial" in family(v).kinds()]
    if spatial and len(gated) != 1:
        raise AttnvizError("an analysis.json of format 1 with spatial attention but not one spatially gated model; "
                           "run python -m attnviz.analyze again")
    return {**result, "format": 2, "spatial": {gated[0]: spatial} if spatial else {}}


def analysis_dir(weights_dir: Path | str | None, set_name: str | None) -> Path:
    """Where the analysis of a model set lives: ``<weights dir>/<set>/analysis``."""
    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    return manifest.weights_dir / (set_name or manifest.default_set) / ANALYSIS_DIR


def regenerate_command(set_name: str, weights_dir: Path | str | None = None) -> str:
    command = f"python -m attnviz.analyze --set {shlex.quote(set_name)}"
    if weights_dir is not None:
        command += f" --weights-dir {shlex.quote(str(weights_dir))}"
    return command


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    defaults = AnalysisConfig()
    parser = argparse.ArgumentParser(
        prog="python -m attnviz.analyze",
        description="Measure localisation and faithfulness per model and CAM method, and the attention read-out, "
        "on attnviz's scenes; writes analysis.json, analysis.md and PNG plots.",
    )
    parser.add_argument("--set", dest="set_name", help="model set (default: the manifest's default, builtin)")
    parser.add_argument("--weights-dir", type=Path, help="folder holding manifest.json (default: weights/)")
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: <weights dir>/<set>/analysis, which the app shows; a quick run or one that "
        "measures less than the default goes to analysis-quick or analysis-partial beside it)",
    )
    parser.add_argument("--models", nargs="+", choices=VARIANTS, help="models to analyse (default: all of the set)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a handful of scenes, 4 steps, no Score-CAM, to try the pipeline (explicit options still win); "
        "written to <weights dir>/<set>/analysis-quick unless --out says otherwise",
    )
    sizes = parser.add_argument_group("sample sizes (scenes 0..n-1 of each split)")
    for name, text in (
        ("val", "val scenes that choose the IoU threshold"),
        ("test", "test scenes"),
        ("unseen", "unseen-glyph scenes"),
        ("pairs", "two-object scenes (two CAMs each)"),
        ("faithfulness", "first test scenes that also get deletion / insertion and ROAD"),
        ("scorecam", "first test scenes that also get Score-CAM (slow: 2048 passes per model)"),
    ):
        sizes.add_argument(f"--{name}", type=int, help=f"{text} (default {getattr(defaults, name)})")
    how = parser.add_argument_group("methods and parameters")
    how.add_argument("--methods", nargs="+", help=f"CAM methods at layer4 (default: {' '.join(DEFAULT_METHODS)})")
    how.add_argument("--layers", nargs="+", help="layers for Grad-CAM (default: layer1 layer2 layer3 layer4)")
    how.add_argument("--steps", type=int, help=f"deletion / insertion steps (default {defaults.steps})")
    how.add_argument(
        "--blur-sigma", type=float, help=f"sigma of the blurred baseline in px at 224 (default {defaults.blur_sigma:g})"
    )
    how.add_argument("--road-methods", nargs="+", help="methods that also get ROAD (default: gradcam)")
    how.add_argument("--road-percentiles", nargs="+", type=int, help="ROAD removal percentiles (default 20 40 60 80)")
    how.add_argument("--tolerance", type=float, help="pointing game tolerance in px (default 15)")
    how.add_argument("--threshold", type=float, help="mask IoU threshold (default: chosen on the val scenes)")
    how.add_argument("--resamples", type=int, help=f"bootstrap resamples (default {defaults.resamples})")
    how.add_argument("--confidence", type=float, help="confidence level (default 0.95)")
    how.add_argument("--seed", type=int, help="seed of the bootstrap, tie-breaks and ROAD noise (default 0)")
    how.add_argument("--knockout-scenes", type=int,
                     help=f"test scenes of the knock-out section (default {defaults.knockout_scenes}; 0: skip it)")
    how.add_argument("--knockout-value", choices=KNOCKOUT_VALUES,
                     help=f"what a switched-off gate outputs in that section (default {defaults.knockout_value})")
    how.add_argument("--sanity-scenes", type=int,
                     help=f"test scenes of the sanity section (default {defaults.sanity_scenes}; 0: skip it)")
    how.add_argument("--sanity-methods", nargs="+",
                     help=f"CAM methods the sanity section checks (default: {' '.join(defaults.sanity_methods)})")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)}) over the analysis already in the "
                             f"output folder, and rewrite its report")
    run = parser.add_argument_group("running")
    run.add_argument("--batch-size", type=int, help=f"images per forward pass (default {defaults.batch_size})")
    run.add_argument("--scorecam-batch", type=int, help=f"Score-CAM batch (default {defaults.scorecam_batch})")
    run.add_argument("--workers", type=int, help="processes for ROAD's imputation, 0 inline (default 2)")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's own, which honours OMP_NUM_THREADS)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite analysis.md and the plots from the analysis.json in the output folder",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> AnalysisConfig:
    values = dict(QUICK) if args.quick else {}
    for name in (
        "val",
        "test",
        "unseen",
        "pairs",
        "faithfulness",
        "scorecam",
        "steps",
        "blur_sigma",
        "tolerance",
        "threshold",
        "resamples",
        "confidence",
        "seed",
        "batch_size",
        "scorecam_batch",
        "workers",
        "knockout_scenes",
        "knockout_value",
        "sanity_scenes",
    ):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    for name in ("methods", "layers", "road_methods", "road_percentiles", "sanity_methods"):
        value = getattr(args, name)
        if value is not None:
            values[name] = tuple(value)
    if args.models:
        values["variants"] = tuple(args.models)
    if "methods" in values and "road_methods" not in values:  # ROAD's default follows the methods asked for
        values["road_methods"] = tuple(m for m in AnalysisConfig.road_methods if m in values["methods"]) or (
            values["methods"][0],)
    return AnalysisConfig(**values)


def measures_less(config: AnalysisConfig, models: Iterable[str]) -> bool:
    """Whether a run measures less than the default one: fewer scenes, steps, resamples or ROAD percentiles, or
    fewer CAM methods, layers or models. Its numbers are not the default run's and must not replace them."""
    full = AnalysisConfig()
    sizes = ("val", "test", "unseen", "pairs", "faithfulness", "steps", "resamples", "knockout_scenes",
             "sanity_scenes")
    if any(getattr(config, name) < getattr(full, name) for name in sizes):
        return True
    for name in ("methods", "layers", "road_methods", "road_percentiles", "sanity_methods"):
        if not set(getattr(full, name)) <= set(getattr(config, name)):
            return True
    return config.variants is not None and not set(models) <= set(config.variants)


def output_dir(args: argparse.Namespace, config: AnalysisConfig, models: Iterable[str]) -> Path:
    """``--out`` when given; else ``<weights dir>/<set>/analysis`` (what the app shows) for a run that measures
    at least the default, and ``analysis-quick`` / ``analysis-partial`` beside it for a quick or smaller run."""
    if args.out:
        return args.out
    shipped = analysis_dir(args.weights_dir, args.set_name)
    if args.quick:
        return shipped.with_name(QUICK_DIR)
    return shipped.with_name(PARTIAL_DIR) if measures_less(config, models) else shipped


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = "python -m attnviz.analyze" + (f" {shlex.join(argv)}" if argv else "")
    try:
        config = config_from_args(args)
        config.validate()
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.report_only and args.out:  # a folder of its own: no model set needed
            info = None
        else:
            info = Manifest(args.weights_dir).get(args.set_name)  # checked before any weights are loaded
        out = output_dir(args, config, info.models if info else ())
        if args.report_only:
            written = write_report(read_result(out), out)
            print(f"rewrote {len(written)} files in {out}")
            return 0
        if args.sections:
            return _sections_command(args, info, config, out)
        variants = check_set(info.name, info.classes, info.models, config.variants)
        model_set = load_model_set(info.name, args.weights_dir, variants=variants)
        result = run_analysis(model_set, config, progress=not args.quiet, command=command)
        written = write_report(result, out)
    except AttnvizError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {out} in {result['timing']['total_s'] / 60:.1f} min")
    shipped = analysis_dir(args.weights_dir, info.name)
    if out.resolve() != shipped.resolve() and not args.out:
        kind = "a quick run" if args.quick else "a run with less than the default sample"
        print(f"{kind}: {shipped} (what the app shows) is untouched; give --out {shipped} to replace it")
    return 0


def _sections_command(args: argparse.Namespace, info, config: AnalysisConfig, out: Path) -> int:
    """--sections: the named sections over the analysis in ``out``, merged into it."""
    result = read_result(out)  # one line saying to run the analysis first when there is none
    model_set = load_model_set(info.name, args.weights_dir, variants=result["variants"])
    started = time.perf_counter()
    run_sections(model_set, result, list(args.sections), config, progress=not args.quiet)
    written = write_report(result, out)
    print(f"ran {', '.join(args.sections)} in {(time.perf_counter() - started) / 60:.1f} min; rewrote "
          f"{len(written)} files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
