"""How well a saliency map localises an object and how faithful it is to the model; paired bootstrap intervals.

Localisation compares a map with the object's true mask: the pointing game
(the map's maximum within ``tolerance`` pixels of the object, Zhang et al.
2016), the share of the map's mass inside the mask (energy in mask; Quantus'
relevance mass accuracy, Arras et al. 2022), the share of the mask's K pixels
among the map's K highest (relevance rank accuracy, Arras et al. 2022), and
the IoU of the map's region above a threshold. At tolerance 0 the first three
agree with Quantus 0.6.0 (tests/test_quantus_agreement.py) except where a
policy below differs from Quantus' by design:

* ties: the pointing game takes the first maximum in raster order, and a flat
  map (every pixel a maximum) points nowhere and misses (Quantus: a hit when
  any maximum is on the object); rank accuracy counts pixels tied at the K-th
  value by the share of them inside the mask, the mean over every order of the
  tied pixels (Quantus: the order its unstable sort happens to give);
* empty masks score 0 in every metric: there is nothing to find (Quantus:
  NaN for mass and rank accuracy; its pointing game writes NaN into a boolean
  array, which reads as a hit);
* a map without mass (all zeros) has energy in mask equal to the mask's area
  share, as a uniform map (Quantus: NaN, from 0 / 0); negative values count as
  no mass (Quantus sums them unless ``abs=True``).

Faithfulness asks the model itself: deletion
and insertion curves (Petsiuk et al. 2018, RISE) and ROAD (Rong et al. 2022,
pytorch-grad-cam's imputer). ``paired_bootstrap`` resamples the same images
for every model, so a difference between two models comes with an interval
that tells it from noise.

Maps are arrays shaped (..., H, W); masks are boolean arrays of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

POINTING_TOLERANCE = 15.0  # pixels at 224 px: the usual tolerance of the pointing game
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


def _flat(values: np.ndarray) -> np.ndarray:
    """(N, H*W) view of an (..., H, W) array."""
    return np.asarray(values).reshape(-1, values.shape[-2] * values.shape[-1])


def area_share(masks: np.ndarray) -> np.ndarray:
    """The fraction of the image each mask covers: the chance level of ``energy_in_mask``."""
    return _flat(masks).mean(axis=1).reshape(masks.shape[:-2])


def energy_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's mass inside its mask (Quantus' relevance mass accuracy). Negative values count as no
    mass; a map with no mass counts as uniform (the mask's area share); an empty mask scores 0."""
    flat_maps = np.maximum(_flat(maps).astype(np.float64), 0)
    flat_masks = _flat(masks).astype(np.float64)
    total = flat_maps.sum(axis=1)
    inside = (flat_maps * flat_masks).sum(axis=1)
    uniform = flat_masks.mean(axis=1)
    share = np.divide(inside, total, out=uniform.copy(), where=total > 0)
    return share.reshape(maps.shape[:-2])


def distance_to_mask(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance in pixels from every pixel to the nearest mask pixel (0 inside; inf for an empty mask)."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return distance_transform_edt(~mask)


def pointing_hits(maps: np.ndarray, distances: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> np.ndarray:
    """Whether each map's maximum lies within ``tolerance`` px of its object (given ``distance_to_mask``).

    The first maximum in raster order counts; a flat map (no maximum) points nowhere and misses; an empty mask
    (every distance infinite) is missed.
    """
    flat = _flat(maps)
    peak = flat.argmax(axis=1)
    rows = np.arange(len(flat))
    flat_map = flat.max(axis=1) <= flat.min(axis=1)
    hits = (_flat(distances)[rows, peak] <= tolerance) & ~flat_map
    return hits.reshape(maps.shape[:-2])


def pointing_game(saliency: np.ndarray, mask: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> bool:
    """The pointing game for one map and one mask."""
    return bool(pointing_hits(saliency[None], distance_to_mask(mask)[None], tolerance)[0])


def rank_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Relevance rank accuracy: the share of each mask's K pixels among its map's K highest (K: the mask's size).

    Pixels tied at the K-th highest value fill the places left by the ones above it in proportion to how many of
    them lie inside the mask (the mean over every order of the tied pixels), so a flat map scores the mask's
    area share; an empty mask scores 0.
    """
    flat_maps = _flat(maps).astype(np.float64)
    flat_masks = _flat(masks).astype(bool)
    sizes = flat_masks.sum(axis=1)
    out = np.zeros(len(flat_maps))
    for i in np.flatnonzero(sizes):
        values, inside, k = flat_maps[i], flat_masks[i], int(sizes[i])
        cut = np.partition(values, values.size - k)[values.size - k]  # the K-th highest value
        above, tied = values > cut, values == cut
        places = k - int(above.sum())  # left for the tied pixels
        hits = (above & inside).sum() + places * (tied & inside).sum() / tied.sum()
        out[i] = hits / k
    return out.reshape(maps.shape[:-2])


def mask_iou(maps: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    """IoU of each map's region at or above ``threshold`` times its own maximum with its mask."""
    return iou_curve(maps, masks, [threshold])[..., 0]


def iou_curve(maps: np.ndarray, masks: np.ndarray, thresholds: Iterable[float]) -> np.ndarray:
    """(..., T): ``mask_iou`` at every threshold; a map with no mass has an empty region."""
    flat_maps = _flat(maps).astype(np.float32)
    flat_masks = _flat(masks).astype(bool)
    peak = flat_maps.max(axis=1, keepdims=True)
    thresholds = list(thresholds)
    out = np.zeros((len(flat_maps), len(thresholds)))
    for j, threshold in enumerate(thresholds):
        region = (flat_maps >= threshold * peak) & (peak > 0)
        union = (region | flat_masks).sum(axis=1)
        inter = (region & flat_masks).sum(axis=1)
        out[:, j] = np.divide(inter, union, out=np.zeros(len(union)), where=union > 0)
    return out.reshape(*maps.shape[:-2], len(thresholds))


def choose_threshold(ious: np.ndarray, thresholds: Iterable[float]) -> tuple[float, np.ndarray]:
    """The threshold with the highest mean IoU over the rows of ``ious`` (N, T), and the mean per threshold."""
    means = np.asarray(ious).reshape(-1, np.shape(ious)[-1]).mean(axis=0)
    return float(list(thresholds)[int(np.argmax(means))]), means


# --------------------------------------------------------------------------- faithfulness


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), kernel to 3 sigma, edges replicated: the deletion baseline."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), horizontal, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), vertical, groups=channels)


def relevance_order(saliency: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Each pixel's rank, 0 for the most relevant; ties broken by ``tiebreak`` (a permutation), else raster order.

    A fixed random tiebreak per image keeps the flat parts of a map (e.g. zeros after the ReLU) from being
    removed top row first, and keeps the same order for every model and method on that image.
    """
    values = -np.asarray(saliency, np.float64).ravel()
    keys = (np.arange(values.size) if tiebreak is None else np.asarray(tiebreak).ravel(), values)
    order = np.lexsort(keys)
    ranks = np.empty(values.size, np.int64)
    ranks[order] = np.arange(values.size)
    return ranks.reshape(saliency.shape)


def target_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each row's target class: the score every faithfulness metric here follows."""
    return torch.softmax(logits.float(), dim=1).gather(1, targets.view(-1, 1))[:, 0]


def _scores(model: nn.Module, images: torch.Tensor, target: int, batch_size: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            targets = torch.full((len(chunk),), target, dtype=torch.long)
            out.append(target_probability(model(chunk), targets).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass
class Curves:
    """Deletion and insertion curves, (maps, steps + 1): the target's probability after each step."""

    deletion: np.ndarray
    insertion: np.ndarray


def deletion_insertion(
    model: nn.Module,
    image: torch.Tensor,
    baseline: torch.Tensor,
    saliencies: np.ndarray,
    target: int,
    steps: int = 10,
    batch_size: int = 32,
    tiebreak: np.ndarray | None = None,
    endpoints: tuple[float, float] | None = None,
) -> Curves:
    """Deletion (image -> baseline) and insertion (baseline -> image) curves of several maps of one image.

    Step ``i`` of ``steps`` swaps the ``i / steps`` most relevant pixels. ``endpoints`` are the target's
    probability on the image and on the baseline when the caller knows them already (they are the same
    for every map of an image), which saves two passes per map.
    """
    _, height, width = image.shape
    pixels = height * width
    counts = [round(i / steps * pixels) for i in range(steps + 1)]
    if endpoints is None:
        endpoints = tuple(_scores(model, torch.stack([image, baseline]), target, batch_size))
    original, blurred = endpoints
    batch = []
    for saliency in np.asarray(saliencies):
        ranks = torch.from_numpy(relevance_order(saliency, tiebreak))
        for count in counts[1:-1]:
            swapped = (ranks < count)[None]
            batch.append(torch.where(swapped, baseline, image))  # deletion: the most relevant pixels go
            batch.append(torch.where(swapped, image, baseline))  # insertion: the most relevant pixels come
    maps = len(saliencies)
    inner = _scores(model, torch.stack(batch), target, batch_size) if batch else np.zeros(0)
    inner = inner.reshape(maps, steps - 1, 2)
    deletion = np.concatenate([np.full((maps, 1), original), inner[:, :, 0], np.full((maps, 1), blurred)], axis=1)
    insertion = np.concatenate([np.full((maps, 1), blurred), inner[:, :, 1], np.full((maps, 1), original)], axis=1)
    return Curves(deletion=deletion, insertion=insertion)


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Area under curves sampled at evenly spaced fractions from 0 to 1 (trapezoid rule), along the last axis."""
    curves = np.asarray(curves, np.float64)
    return (curves[..., 1:] + curves[..., :-1]).sum(axis=-1) / (2 * (curves.shape[-1] - 1))


# --------------------------------------------------------------------------- ROAD


@dataclass(frozen=True)
class RoadJob:
    """One ROAD imputation: remove a share of one image's pixels in the map's order and infill them."""

    image: np.ndarray  # (C, H, W) float32: plain arrays pickle cheaply to worker processes
    saliency: np.ndarray  # (H, W)
    percentile: int
    most_relevant_first: bool
    seed: int  # the imputer adds noise: a seed per job makes the result independent of the worker that runs it


def road_impute(job: RoadJob) -> np.ndarray:
    """pytorch-grad-cam's ROAD perturbation (noisy linear imputation) for one job; runs in a worker process too."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst

    metric = (ROADMostRelevantFirst if job.most_relevant_first else ROADLeastRelevantFirst)(job.percentile)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        image = torch.from_numpy(np.asarray(job.image, np.float32))
        return metric.perturbation(image, torch.from_numpy(np.asarray(job.saliency, np.float32))).numpy()


def road_worker_start() -> None:
    """Worker processes impute with scipy on one core each; torch must not spread over the others."""
    torch.set_num_threads(1)


def road_jobs(image: torch.Tensor, saliencies: np.ndarray, percentiles: Iterable[int], seed: int) -> list[RoadJob]:
    """The jobs for every map of one image: per map, most-relevant-first then least-relevant-first, per percentile."""
    percentiles = list(percentiles)
    pixels = image.detach().cpu().numpy().astype(np.float32)
    jobs = []
    for m, saliency in enumerate(np.asarray(saliencies)):
        for first, most in enumerate((True, False)):
            for p, percentile in enumerate(percentiles):
                job_seed = int(np.random.default_rng([seed, m, first, p]).integers(2**31))
                jobs.append(RoadJob(pixels, saliency, int(percentile), most, job_seed))
    return jobs


@dataclass
class RoadScores:
    """Change of the target's probability after ROAD removal, averaged over the percentiles, one per map."""

    most_relevant_first: np.ndarray  # lower (a bigger drop) means a more faithful map
    least_relevant_first: np.ndarray  # higher (a smaller drop) means a more faithful map

    @property
    def combined(self) -> np.ndarray:
        """pytorch-grad-cam's ROADCombined: (LeRF - MoRF) / 2, higher is better."""
        return (self.least_relevant_first - self.most_relevant_first) / 2


def road_scores(
    model: nn.Module,
    original_probability: float,
    target: int,
    imputed: list[np.ndarray],
    maps: int,
    percentiles: int,
    batch_size: int = 32,
) -> RoadScores:
    """Score imputed images laid out as ``road_jobs`` makes them (maps x [MoRF, LeRF] x percentiles)."""
    scores = _scores(model, torch.from_numpy(np.stack(imputed)), target, batch_size) - original_probability
    scores = scores.reshape(maps, 2, percentiles).mean(axis=2)
    return RoadScores(most_relevant_first=scores[:, 0], least_relevant_first=scores[:, 1])


def road(
    model: nn.Module,
    image: torch.Tensor,
    saliencies: np.ndarray,
    target: int,
    percentiles: Iterable[int] = (20, 40, 60, 80),
    seed: int = 0,
    batch_size: int = 32,
    run: Callable[[list[RoadJob]], Iterable[np.ndarray]] | None = None,
) -> RoadScores:
    """ROAD for several maps of one image; ``run`` maps jobs to imputed images (e.g. a process pool's map)."""
    percentiles = list(percentiles)
    jobs = road_jobs(image, saliencies, percentiles, seed)
    imputed = list((run or (lambda js: map(road_impute, js)))(jobs))
    original = float(_scores(model, image[None], target, batch_size)[0])
    return road_scores(model, original, target, imputed, len(saliencies), len(percentiles), batch_size)


# --------------------------------------------------------------------------- paired bootstrap


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial share (95 % for z = 1.96), e.g. of a top-1 accuracy."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        def clean(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 6)

        return {"mean": clean(self.mean), "low": clean(self.low), "high": clean(self.high)}


@dataclass
class PairedBootstrap:
    """Means with intervals per name, and the intervals of every pairwise difference (later minus earlier)."""

    n: int
    means: dict[str, Interval]
    differences: dict[tuple[str, str], Interval]  # (a, b) -> mean of b - a


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices drawn with replacement; one draw shared by all the values it resamples."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), int)


def _interval(values: np.ndarray, indices: np.ndarray, confidence: float) -> Interval:
    if len(values) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    means = values[indices].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(values.mean()), float(low), float(high))


def paired_bootstrap(
    samples: dict[str, np.ndarray], resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> PairedBootstrap:
    """Percentile-bootstrap intervals of each mean and each pairwise difference, resampling the same rows for all.

    Every array holds one value per image, the images in the same order, so a resample keeps each image's
    values together: the differences' intervals carry only the variation between the two models on the same
    images, not the variation between images.
    """
    arrays = {k: np.asarray(v, np.float64) for k, v in samples.items()}
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"paired samples must have one length, got {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    indices = bootstrap_indices(n, resamples, seed)
    means = {k: _interval(v, indices, confidence) for k, v in arrays.items()}
    names = list(arrays)
    differences = {
        (a, b): _interval(arrays[b] - arrays[a], indices, confidence)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    return PairedBootstrap(n=n, means=means, differences=differences)
