"""The model-parameter randomisation test (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

A saliency map that explains a model must change when the model's learned weights are destroyed. The
cascading test re-initialises the network from the top, one step more at a time (``fc``, then layer4's blocks
from the last, layer3's, layer2's, layer1's, then the stem's conv1 and bn1), recomputes every map after each
step and compares it with the original map: the Spearman rank correlation of the absolute values and SSIM.
The independent test randomises one step at a time, the rest as trained. A Sobel edge map of the image, which
ignores the model, goes through the same comparison: it stays equal to itself and fails, as it must.

Every map explains the original (trained) model's predicted class, through the usual explain path
(``ModelExplainer.explain_batch``) at one target layer (default layer4). A step re-initialises each of its
modules with the module's own ``reset_parameters`` (BatchNorm: weight 1, bias 0, running mean 0, variance 1)
under a seed of its own, the same seed in both tests. The randomisation runs on a deep copy of the model, never
on the model that serves requests, and holds at most that one copy at a time: the independent test restores
each step's weights from a copy of that step's modules alone, and the cascade runs on the same copy afterwards.

The rule (``passes``): a method passes when the mean Spearman correlation after the full cascade is below 0.5
with its 95 % interval, i.e. the upper end of the interval is below 0.5; otherwise it fails.

    found = check_model(model, "cbam", classes, x, ["gradcam", "eigencam"])
    found.cascade["spearman"]["gradcam"][-1]      # (scenes,): each scene after the full cascade
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attnviz.capture import model_lock
from attnviz.errors import AttnvizError
from attnviz.methods import CAM_METHODS
from attnviz.metrics import Interval, paired_bootstrap

EDGES = "edges"  # the Sobel edge map's key beside the methods': the reference that must fail
EDGES_LABEL = "Sobel edge map"
MEASURES = ("spearman", "ssim")
THRESHOLD = 0.5  # the rule: the Spearman interval after the full cascade must lie below this
DEFAULT_LAYER = "layer4"
STEM = "stem"  # the last step: conv1 and bn1
SSIM_SIGMA = 1.5  # Wang et al. 2004: an 11 x 11 Gaussian window of sigma 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5: the 11 x 11 window
SSIM_K = (0.01, 0.03)

Progress = Callable[[int, int], None]  # (passes done, passes in all)


# --------------------------------------------------------------------------- the steps


def randomisation_steps(model: nn.Module) -> list[str]:
    """The cascade's order: ``fc``, every residual block from the last (``layer4.2`` ... ``layer1.0``), ``stem``."""
    blocks = [f"{stage}.{i}" for stage in ("layer1", "layer2", "layer3", "layer4")
              for i in range(len(model.get_submodule(stage)))]
    return ["fc", *reversed(blocks), STEM]


def depth_labels(steps: Sequence[str]) -> list[str]:
    """Tick labels for depth 0 (the original) and each step, named where a stage starts (its first step in the
    cascade's order): "0", "fc", "l4", "", "", "l3", ..., "stem"."""
    labels, seen = ["0"], set()
    for step in steps:
        stage = step.split(".")[0]
        labels.append("" if stage in seen else stage.replace("layer", "l"))
        seen.add(stage)
    return labels


def step_modules(model: nn.Module, step: str) -> list[nn.Module]:
    """The modules a step re-initialises (with everything inside them)."""
    if step == STEM:
        return [model.get_submodule("conv1"), model.get_submodule("bn1")]
    return [model.get_submodule(step)]


def step_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th step: the same in the cascading and the independent test."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def randomise_step(model: nn.Module, step: str, seed: int) -> None:
    """Re-initialise every module of ``step`` in place with its own ``reset_parameters``, seeded with ``seed``
    (torch's global generator is forked: the caller's random state is left as it was)."""
    modules = [m for top in step_modules(model, step) for m in top.modules()]
    stuck = [type(m).__name__ for m in modules
             if any(True for _ in m.parameters(recurse=False)) and not callable(getattr(m, "reset_parameters", None))]
    if stuck:
        raise AttnvizError(f"{step}: a {stuck[0]} has parameters but no reset_parameters, so it cannot be "
                           f"re-initialised with its own init")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in modules:
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def _saved(model: nn.Module, step: str) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in step_modules(model, step)]


def _restore(model: nn.Module, step: str, saved: list[dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for module, state in zip(step_modules(model, step), saved, strict=True):
            module.load_state_dict(state)


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` made while no request holds it (its capture lock), so no request's hooks come
    along; the copy is the one the test randomises."""
    with model_lock(model):
        return copy.deepcopy(model).eval()


def check_methods(methods: Sequence[str]) -> None:
    """One line when a method cannot run in the test: unknown, or with passes of its own (every map is made
    once per step: Score-CAM and Ablation-CAM would take thousands of passes each)."""
    if not methods:
        raise AttnvizError("the sanity check needs at least one CAM method")
    for method in methods:
        if method not in CAM_METHODS or CAM_METHODS[method].kind == "perturbation":
            choices = ", ".join(k for k, m in CAM_METHODS.items() if m.kind != "perturbation")
            raise AttnvizError(f"the sanity check cannot run CAM method {method!r}: it recomputes every map once "
                               f"per randomisation step; choose from {choices}")


# --------------------------------------------------------------------------- similarity


def _crop(values: np.ndarray) -> np.ndarray:
    """The positions whose whole window lies inside the map (as skimage's structural_similarity keeps)."""
    r = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return values[..., r:-r, r:-r]


def _blur(values: np.ndarray) -> np.ndarray:
    sigma = (0,) * (values.ndim - 2) + (SSIM_SIGMA, SSIM_SIGMA)
    from scipy import ndimage  # here, not at import: the app imports this module, scipy costs 0.3-0.5 s

    return ndimage.gaussian_filter(values, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")


class Reference:
    """Original maps (N, H, W), prepared once for comparing every later map of the same scenes with them: their
    ranks for Spearman, their local means and variances for SSIM."""

    def __init__(self, maps: np.ndarray, data_range: float = 1.0) -> None:
        self.maps = np.asarray(maps, np.float64)
        if self.maps.ndim != 3 or min(self.maps.shape[-2:]) < 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1:
            raise ValueError(f"expected (N, H, W) maps of at least 11 x 11, got {self.maps.shape}")
        self.ranks, self.norms = _centred_ranks(self.maps)
        self.c1, self.c2 = (SSIM_K[0] * data_range) ** 2, (SSIM_K[1] * data_range) ** 2
        self.mean = _blur(self.maps)
        self.variance = _blur(self.maps * self.maps) - self.mean**2

    def spearman(self, maps: np.ndarray) -> np.ndarray:
        """(N,): the Spearman rank correlation of the absolute values of each map with its original. A map with
        one value everywhere ranks nothing: it correlates 1 with the same map and 0 with any other."""
        found = np.asarray(maps, np.float64)
        ranks, norms = _centred_ranks(found)
        flat = (self.norms == 0) | (norms == 0)
        same = np.array([np.array_equal(np.abs(p), np.abs(q)) for p, q in zip(self.maps, found, strict=True)])
        out = np.divide((self.ranks * ranks).sum(axis=1), self.norms * norms, out=np.zeros(len(found)),
                        where=~flat)
        return np.where(flat, same.astype(np.float64), np.clip(out, -1.0, 1.0))

    def ssim(self, maps: np.ndarray) -> np.ndarray:
        """(N,): the mean SSIM of each map with its original (Wang et al. 2004: Gaussian window of sigma 1.5,
        K1 = 0.01, K2 = 0.03, population variances), over the positions whose window lies inside the map."""
        y = np.asarray(maps, np.float64)
        if y.shape != self.maps.shape:
            raise ValueError(f"maps of shape {y.shape} against originals of shape {self.maps.shape}")
        mx, my = self.mean, _blur(y)
        vy, vxy = _blur(y * y) - my * my, _blur(self.maps * y) - mx * my
        index = (2 * mx * my + self.c1) * (2 * vxy + self.c2) / ((mx * mx + my * my + self.c1)
                                                                  * (self.variance + vy + self.c2))
        return _crop(index).mean(axis=(-2, -1))


def _centred_ranks(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each map's ranks of absolute values (ties averaged), centred, and their norms."""
    from scipy.stats import rankdata  # imported on use, as ndimage above

    flat = np.abs(np.asarray(maps, np.float64)).reshape(len(maps), -1)
    ranks = rankdata(flat, axis=1)
    ranks -= ranks.mean(axis=1, keepdims=True)
    return ranks, np.linalg.norm(ranks, axis=1)


def ssim(first: np.ndarray, second: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of two (H, W) maps (see ``Reference.ssim``)."""
    return float(Reference(np.asarray(first)[None], data_range).ssim(np.asarray(second)[None])[0])


def spearman_abs(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of the absolute values of two (H, W) maps (see ``Reference.spearman``)."""
    return float(Reference(np.asarray(first)[None]).spearman(np.asarray(second)[None])[0])


def sobel_edges(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """The Sobel gradient magnitude of each image's channel mean, scaled to [0, 1]: (N, H, W) for (N, C, H, W).
    It reads the image only, never the model: the reference map that must fail the test."""
    from scipy import ndimage

    grey = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, np.float64).mean(axis=1)
    magnitude = np.hypot(ndimage.sobel(grey, axis=-1), ndimage.sobel(grey, axis=-2))
    peak = magnitude.reshape(len(grey), -1).max(axis=1)[:, None, None]
    return np.divide(magnitude, peak, out=np.zeros_like(magnitude), where=peak > 0).astype(np.float32)


def compare(originals: dict[str, Reference], found: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """measure -> map kind -> (N,): each found map against its original."""
    return {"spearman": {k: originals[k].spearman(v) for k, v in found.items()},
            "ssim": {k: originals[k].ssim(v) for k, v in found.items()}}


# --------------------------------------------------------------------------- the test on one model


@dataclass
class ModelSanity:
    """One model's maps after each randomisation step against its original maps, on N scenes.

    ``cascade[measure][kind]`` is (steps + 1, N): row 0 the original against itself, row i after the first i
    steps; ``independent[measure][kind]`` is (steps, N): row i with step i alone randomised (None: not run).
    A kind is a method key or ``EDGES``."""

    variant: str
    layer: str
    methods: list[str]
    steps: list[str]
    targets: list[int]  # the original model's predicted class per scene: what every map explains
    cascade: dict[str, dict[str, np.ndarray]]
    independent: dict[str, dict[str, np.ndarray]] | None
    passes: int  # forward passes made (each with its backward to the target layer)
    seconds: float

    def final(self, kind: str, measure: str = "spearman") -> np.ndarray:
        """(N,): after the full cascade."""
        return self.cascade[measure][kind][-1]


@dataclass
class _Run:
    """The copy under test and what it needs to make every map of the scenes once."""

    explainer: object  # a ModelExplainer of the copy
    x: torch.Tensor
    targets: list[int]
    configs: list[tuple[str, str]]
    batch_size: int
    report: Callable[[int], None]
    passes: int = 0

    def maps(self) -> dict[str, np.ndarray]:
        """kind -> (N, H, W): every method's map of every scene, and the edge map (made from the image alone)."""
        found: dict[str, list[np.ndarray]] = {method: [] for method, _ in self.configs}
        for start in range(0, len(self.x), self.batch_size):
            chunk = self.x[start : start + self.batch_size]
            out = self.explainer.explain_batch(chunk, self.targets[start : start + self.batch_size], self.configs)
            for (method, layer) in self.configs:
                found[method].append(np.nan_to_num(np.asarray(out.maps[method, layer], np.float32)))
            self.passes += len(chunk)
            self.report(len(chunk))
        return {**{k: np.concatenate(v) for k, v in found.items()}, EDGES: sobel_edges(self.x)}


def _stack(rows: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    return {measure: {kind: np.stack([row[measure][kind] for row in rows]) for kind in rows[0][measure]}
            for measure in MEASURES}


def predicted(model: nn.Module, x: torch.Tensor, batch_size: int = 16) -> list[int]:
    """Each image's top-1 class by ``model`` (one forward pass without gradients)."""
    with model_lock(model), torch.no_grad():
        return [int(i) for start in range(0, len(x), batch_size)
                for i in model(x[start : start + batch_size]).argmax(dim=1)]


def check_model(model: nn.Module, variant: str, classes: list[str], x: torch.Tensor, methods: Sequence[str],
                layer: str = DEFAULT_LAYER, *, seed: int = 0, independent: bool = True, batch_size: int = 16,
                targets: Sequence[int] | None = None, progress: Progress | None = None) -> ModelSanity:
    """The cascading (and, with ``independent``, the independent) randomisation test of one model on the images
    ``x`` (N, 3, S, S, normalised as the model expects). ``model`` itself is never changed: the test runs on one
    private copy, freed when it returns. ``targets``: the classes to explain (default: ``model``'s top-1)."""
    from attnviz.explainer import ModelExplainer

    check_methods(methods)
    started = time.perf_counter()
    steps = randomisation_steps(model)
    total = len(x) * (1 + len(steps) * (2 if independent else 1))
    done = 0

    def report(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    copy_model = private_copy(model)
    targets = list(targets) if targets is not None else predicted(copy_model, x, batch_size)
    run = _Run(ModelExplainer(variant, copy_model, classes), x, targets,
               [(m, layer) for m in dict.fromkeys(methods)], batch_size, report)
    originals = {kind: Reference(maps) for kind, maps in run.maps().items()}
    cascade = [compare(originals, {k: r.maps for k, r in originals.items()})]
    rows = []
    for i, step in enumerate(steps if independent else []):
        saved = _saved(copy_model, step)  # that step's modules only: never a second copy of the model
        randomise_step(copy_model, step, step_seed(seed, i))
        rows.append(compare(originals, run.maps()))
        _restore(copy_model, step, saved)
    for i, step in enumerate(steps):
        randomise_step(copy_model, step, step_seed(seed, i))
        cascade.append(compare(originals, run.maps()))
    return ModelSanity(variant, layer, list(dict.fromkeys(methods)), steps, targets, _stack(cascade),
                       _stack(rows) if rows else None, run.passes, time.perf_counter() - started)


def join(parts: Sequence[ModelSanity]) -> ModelSanity:
    """One model's test over several groups of scenes as one over all of them, the groups' scenes in the given
    order. The randomised weights depend on the seed and the step alone, so each scene's values are those of one
    call on every scene (up to the float rounding of other batch sizes)."""
    first = parts[0]

    def scenes(tables: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
        return {m: {k: np.concatenate([t[m][k] for t in tables], axis=1) for k in tables[0][m]} for m in tables[0]}

    return ModelSanity(first.variant, first.layer, first.methods, first.steps,
                       [t for part in parts for t in part.targets], scenes([p.cascade for p in parts]),
                       None if first.independent is None else scenes([p.independent for p in parts]),
                       sum(p.passes for p in parts), sum(p.seconds for p in parts))


# --------------------------------------------------------------------------- the rule and the summary


def passes(final: Interval) -> bool:
    """The rule: the interval of the mean Spearman correlation after the full cascade lies below 0.5."""
    return bool(np.isfinite(final.high) and final.high < THRESHOLD)


def _intervals(rows: np.ndarray, resamples: int, confidence: float, seed: int) -> list[Interval]:
    """One interval of the mean over scenes per row of (depth, N) (the same resampled scenes for every row)."""
    boot = paired_bootstrap({str(i): row for i, row in enumerate(rows)}, resamples, confidence, seed)
    return [boot.means[str(i)] for i in range(len(rows))]


def summarise(found: ModelSanity, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Plain data: per test, measure and kind, the mean over scenes at each depth with its bootstrap interval;
    per kind the verdict of the rule."""
    out: dict = {"targets": list(found.targets), "passes": found.passes, "seconds": round(found.seconds, 1)}
    final: dict[str, Interval] = {}
    for name, table in (("cascade", found.cascade), ("independent", found.independent)):
        if table is None:
            continue
        out[name] = {}
        for measure, kinds in table.items():
            out[name][measure] = {}
            for kind, rows in kinds.items():
                intervals = _intervals(rows, resamples, confidence, seed)
                out[name][measure][kind] = [iv.to_dict() for iv in intervals]
                if name == "cascade" and measure == "spearman":
                    final[kind] = intervals[-1]
    out["verdict"] = {kind: {"final": iv.to_dict(), "passes": passes(iv)} for kind, iv in final.items()}
    return out


# --------------------------------------------------------------------------- one image, every model (the app)


@dataclass
class ImageSanity:
    """The cascading test of one image with one method for several models of a set."""

    method: str
    layer: str
    classes: list[str]
    models: dict[str, ModelSanity]
    seconds: float

    def passes(self, variant: str) -> bool:
        """The rule on one image: the Spearman correlation after the full cascade is below 0.5."""
        return bool(self.models[variant].final(self.method)[0] < THRESHOLD)

    def summary(self) -> dict:
        """Plain data for the API: per model the explained class, Spearman and SSIM at every depth (the original
        first), the edge map's, and the verdict on this image."""
        models = {}
        for variant, found in self.models.items():
            models[variant] = {
                "target": self.classes[found.targets[0]],
                **{measure: [round(float(v), 6) for v in found.cascade[measure][self.method][:, 0]]
                   for measure in MEASURES},
                "edges": {measure: [round(float(v), 6) for v in found.cascade[measure][EDGES][:, 0]]
                          for measure in MEASURES},
                "passes": self.passes(variant),
                "seconds": round(found.seconds, 2),
            }
        first = next(iter(self.models.values()), None)
        return {"method": self.method, "layer": self.layer, "test": "cascade", "threshold": THRESHOLD,
                "steps": ["original", *(first.steps if first else [])], "seconds": round(self.seconds, 2),
                "models": models}


def check_image(explainer, image, method: str, variants: Sequence[str] | None = None, *, layer: str = DEFAULT_LAYER,
                seed: int = 0, progress: Callable[[float, str], None] | None = None) -> ImageSanity:
    """The cascading test of one image (anything ``load_image`` takes) with ``method`` for each chosen model of
    an ``Explainer``'s set, one model after another: one private copy in memory at a time."""
    from attnviz.attention import family
    from attnviz.images import load_image, preprocess

    check_methods([method])
    started = time.perf_counter()
    chosen = list(variants) if variants else list(explainer.explainers)
    x = preprocess(load_image(image), explainer.model_set.preprocessing).tensor
    found = {}
    for i, variant in enumerate(chosen):
        def report(done: int, total: int, i: int = i, title: str = family(variant).title) -> None:
            if progress is not None:
                progress((i + done / total) / len(chosen), f"sanity check, {title}: step {done - 1}/{total - 1}")

        found[variant] = check_model(explainer.explainers[variant].model, variant, explainer.classes, x, [method],
                                     layer, seed=seed, independent=False, batch_size=1, progress=report)
    return ImageSanity(method, layer, list(explainer.classes), found, time.perf_counter() - started)
