"""Explain one image with every model of a set: top-k, CAM heatmaps and the recorded attention.

One forward pass per model serves the probabilities, every attention module's
record and the CAM. Gradient methods backpropagate from the target logit only
as far as the target layer, with no parameter gradients, and then hand the
activations and gradients to pytorch-grad-cam's own method classes, so the
maps are pytorch-grad-cam's. Score-CAM and augmentation smoothing run extra
passes on altered copies of the image; the attention shown always comes from
the first pass on the image itself.

    from attnviz import explain, load_model_set
    result = explain("scene.png")              # the built-in set
    result.results["cbam"].top[0].name         # plain data: arrays and numbers
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from attnviz.attention import attention_modules, clear_records
from attnviz.errors import AttnvizError
from attnviz.images import ImageSource, load_image, preprocess
from attnviz.models import TARGET_LAYERS, VARIANT_TITLES
from attnviz.weights import LoadedSet, load_model_set


@dataclass(frozen=True)
class CamMethod:
    key: str
    label: str
    kind: str  # "gradient": activations and gradients; "activation": activations only; "perturbation": extra passes


CAM_METHODS: dict[str, CamMethod] = {
    m.key: m
    for m in (
        CamMethod("gradcam", "Grad-CAM", "gradient"),
        CamMethod("gradcam++", "Grad-CAM++", "gradient"),
        CamMethod("xgradcam", "XGrad-CAM", "gradient"),
        CamMethod("layercam", "LayerCAM", "gradient"),
        CamMethod("hirescam", "HiResCAM", "gradient"),
        CamMethod("eigengradcam", "Eigen-Grad-CAM", "gradient"),
        CamMethod("eigencam", "EigenCAM", "activation"),
        CamMethod("scorecam", "Score-CAM", "perturbation"),
    )
}


PRECISIONS = ("fp32", "bf16")


def cam_class(key: str) -> type:
    """pytorch-grad-cam's class for a method key."""
    import pytorch_grad_cam as pgc

    return {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
        "hirescam": pgc.HiResCAM,
        "eigengradcam": pgc.EigenGradCAM,
        "eigencam": pgc.EigenCAM,
        "scorecam": pgc.ScoreCAM,
    }[key]


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain; every field has the app's default."""

    method: str = "gradcam"
    layer: str = "layer4"
    target: int | None = None  # a class index of the set, or None for each model's own top-1
    top_k: int = 5
    aug_smooth: bool = False
    eigen_smooth: bool = False
    variants: tuple[str, ...] | None = None  # None: every model of the set
    time_limit: float | None = 300.0  # seconds for the slow methods, per request
    score_cam_batch: int = 32
    precision: str = "fp32"  # "bf16": the image's own pass under bfloat16 autocast; maps and records stay float32

    def validate(self, classes: list[str]) -> None:
        if self.method not in CAM_METHODS:
            raise AttnvizError(f"unknown CAM method {self.method!r}; choose one of {', '.join(CAM_METHODS)}")
        if self.layer not in TARGET_LAYERS:
            raise AttnvizError(f"unknown target layer {self.layer!r}; choose one of {', '.join(TARGET_LAYERS)}")
        if self.target is not None and not 0 <= self.target < len(classes):
            raise AttnvizError(f"target class {self.target} is outside this set's {len(classes)} classes")
        if self.top_k < 1:
            raise AttnvizError("top-k must be at least 1")
        if self.precision not in PRECISIONS:
            raise AttnvizError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")


@dataclass
class Prediction:
    index: int
    name: str
    probability: float


@dataclass
class BlockAttention:
    """What one attention module computed on the image: channel weights, and CBAM's spatial map."""

    block: str  # e.g. "layer3.2"
    channel_weights: np.ndarray  # (channels,) in (0, 1)
    spatial_map: np.ndarray | None  # (height, width) in (0, 1), CBAM only

    @property
    def stage(self) -> str:
        return self.block.split(".")[0]


@dataclass
class ModelResult:
    variant: str
    probabilities: np.ndarray  # (classes,) softmax of the first pass
    top: list[Prediction]
    target: Prediction  # the class the heatmap explains
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], scaled to its own maximum
    attention: list[BlockAttention]
    seconds: float

    @property
    def title(self) -> str:
        return VARIANT_TITLES[self.variant]


@dataclass
class Explanation:
    """Everything one request produced, as plain data; ``render`` turns it into pictures."""

    view: np.ndarray  # (H, W, 3) uint8: the preprocessed image all models saw
    classes: list[str]
    set_name: str
    settings: ExplainSettings
    results: dict[str, ModelResult] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)  # "a|b" -> IoU of the top-20 % regions

    def summary(self) -> dict:
        """Predictions, agreement and settings as JSON-ready data."""
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.settings).items()}
        return {
            "set": self.set_name,
            "settings": settings,
            "models": {
                v: {
                    "title": r.title,
                    "top": [vars(p) for p in r.top],
                    "target": vars(r.target),
                    "seconds": round(r.seconds, 4),
                }
                for v, r in self.results.items()
            },
            "agreement_top20_iou": self.agreement,
        }


ProgressCallback = Callable[[float, str], None]


class _DeadlineModel(nn.Module):
    """Wraps a model for Score-CAM's extra passes: reports progress and stops at the deadline."""

    def __init__(
        self,
        model: nn.Module,
        total: int,
        batch: int,
        report: ProgressCallback | None,
        deadline: float | None,
        label: str,
    ) -> None:
        super().__init__()
        self.inner = model
        self.total_batches = max(1, -(-total // batch))
        self.done = 0
        self.report = report
        self.deadline = deadline
        self.label = label
        self.started = time.perf_counter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise AttnvizError(
                "the CAM method ran past the time limit; choose a faster method (Grad-CAM), an "
                "earlier layer with fewer channels, or fewer models"
            )
        out = self.inner(x)
        self.done += 1
        if self.report is not None:
            elapsed = time.perf_counter() - self.started
            remaining = elapsed / self.done * (self.total_batches - self.done)
            self.report(
                self.done / self.total_batches,
                f"{self.label}: batch {self.done}/{self.total_batches}, about {remaining:.0f} s left",
            )
        return out


def top_region_mask(values: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Boolean mask, shaped like ``values``, of its ``fraction`` highest-valued pixels.

    Exactly k pixels: every pixel above the k-th highest value, then, among pixels equal to it, the last ones in
    raster order (the pixels a stable ascending sort puts last). A partition instead of a sort: linear time.
    """
    flat = np.asarray(values).ravel()
    k = max(1, int(round(fraction * flat.size)))
    kth = np.partition(flat, flat.size - k)[flat.size - k]
    mask = flat > kth
    missing = k - int(mask.sum())
    if missing:
        mask[np.flatnonzero(flat == kth)[-missing:]] = True
    return mask.reshape(np.shape(values))


def masks_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(int((a | b).sum()), 1))


def top_region_iou(a: np.ndarray, b: np.ndarray, fraction: float = 0.2) -> float:
    """IoU of the ``fraction`` highest-valued pixels of two maps of one size."""
    return masks_iou(top_region_mask(a, fraction), top_region_mask(b, fraction))


class ModelExplainer:
    """One model with the lock that guards its hooks and attention records."""

    def __init__(self, variant: str, model: nn.Module, classes: list[str]) -> None:
        self.variant = variant
        self.model = model.eval()
        self.classes = classes
        self.lock = threading.Lock()
        for p in self.model.parameters():  # inference only: no parameter ever needs a gradient
            p.requires_grad_(False)

    def _layer(self, name: str) -> nn.Module:
        return getattr(self.model, name)

    def _forward(
        self, x: torch.Tensor, layers: list[str], needs_grad: bool, precision: str = "fp32"
    ) -> tuple[torch.Tensor, dict]:
        """One forward pass capturing the layers' outputs; the earliest becomes a leaf that needs a gradient."""
        captured: dict[str, torch.Tensor] = {}

        def make_hook(name: str):
            def hook(module, inputs, output):
                if needs_grad and not output.requires_grad:
                    output = output.detach().requires_grad_(True)  # backprop stops here: no deeper, no weights
                captured[name] = output
                return output

            return hook

        handles = [self._layer(n).register_forward_hook(make_hook(n)) for n in layers]
        try:
            bf16 = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
            with torch.set_grad_enabled(needs_grad), bf16:
                logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return logits, captured

    def _read_attention(self) -> list[BlockAttention]:
        records = []
        for block, module in attention_modules(self.model):
            channel = module.last_channel_weights
            spatial = module.last_spatial_map
            records.append(
                BlockAttention(
                    block=block,
                    channel_weights=channel[0].float().cpu().numpy().copy(),
                    spatial_map=None if spatial is None else spatial[0].float().cpu().numpy().copy(),
                )
            )
        return records

    def explain(
        self,
        x: torch.Tensor,
        settings: ExplainSettings,
        progress: ProgressCallback | None = None,
        deadline: float | None = None,
    ) -> ModelResult:
        started = time.perf_counter()
        method = CAM_METHODS[settings.method]
        with self.lock:
            try:
                return self._explain_locked(x, settings, method, progress, deadline, started)
            finally:
                clear_records(self.model)

    def _explain_locked(self, x, settings, method, progress, deadline, started) -> ModelResult:
        needs_grad = method.kind == "gradient" and not settings.aug_smooth
        logits, captured = self._forward(x, [settings.layer], needs_grad, settings.precision)
        attention = self._read_attention()
        probabilities = torch.softmax(logits.detach().float(), dim=1)[0].cpu().numpy()
        order = np.argsort(-probabilities, kind="stable")
        shown = order[: min(settings.top_k, len(order))]
        top = [Prediction(int(i), self.classes[i], float(probabilities[i])) for i in shown]
        target_index = int(order[0]) if settings.target is None else settings.target
        target = Prediction(target_index, self.classes[target_index], float(probabilities[target_index]))
        if settings.aug_smooth:
            heatmap = self._library_path(x, target_index, settings, method)
        else:
            activation = captured[settings.layer]
            gradient = None
            if method.kind == "gradient":
                (gradient,) = torch.autograd.grad(logits[0, target_index], activation)
            passes = None
            if method.kind == "perturbation":
                passes = _DeadlineModel(self.model, activation.shape[1], settings.score_cam_batch, progress,
                                        deadline, VARIANT_TITLES[self.variant])
            heatmap = library_cam(self.model, settings.method, settings.layer, x, activation, gradient,
                                  [target_index], settings.eigen_smooth, settings.score_cam_batch, passes)[0]
        return ModelResult(
            variant=self.variant,
            probabilities=probabilities,
            top=top,
            target=target,
            heatmap=np.asarray(heatmap, np.float32),
            attention=attention,
            seconds=time.perf_counter() - started,
        )

    def explain_grid(self, x: torch.Tensor, methods: list[str], layers: list[str], targets: list[int],
                     precision: str = "fp32") -> GridResult:
        """Every (method, layer, target class) map from one forward pass of one image: each layer's output is
        captured on the way, and each class gets one backward pass from its logit to the earliest layer only.
        Gradient and activation methods only: Score-CAM needs passes of its own for every class and layer."""
        slow = [m for m in methods if CAM_METHODS[m].kind == "perturbation"]
        if slow:
            raise AttnvizError(f"{CAM_METHODS[slow[0]].label} needs passes of its own for every class and layer; "
                               f"explain with it one class and layer at a time")
        with self.lock:
            try:
                return _grid_explain(self, x, methods, layers, targets, precision)
            finally:
                clear_records(self.model)

    def _library_path(self, x, target_index, settings, method) -> np.ndarray:
        """pytorch-grad-cam's own call, for test-time augmentation smoothing (several passes)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        inputs = x.clone().requires_grad_(method.kind == "gradient")  # gradients flow without weight gradients
        cam = cam_class(settings.method)(self.model, target_layers=[self._layer(settings.layer)])
        try:
            with torch.enable_grad():
                return cam(inputs, [ClassifierOutputTarget(target_index)], aug_smooth=True,
                           eigen_smooth=settings.eigen_smooth)[0]
        finally:
            cam.activations_and_grads.release()  # its hooks come off the model


def library_cam(model: nn.Module, method: str, layer: str, x: torch.Tensor, activation: torch.Tensor,
                gradient: torch.Tensor | None, targets: list[int], eigen_smooth: bool = False,
                batch_size: int | None = None, passes: nn.Module | None = None) -> np.ndarray:
    """pytorch-grad-cam's own class for ``method`` at ``layer``, fed the activation (and gradient) of a pass made
    elsewhere instead of running its own: (batch, H, W) float32 maps in [0, 1], one per image and its target.
    The perturbation methods still run their own passes on ``x`` (in batches of ``batch_size``), through
    ``passes`` when given (e.g. a model that reports progress and keeps a deadline)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cam_class(method)(model, target_layers=[getattr(model, layer)])
    try:
        cam.activations_and_grads.release()
        cam.activations_and_grads.activations = [activation.detach().float().cpu()]
        cam.activations_and_grads.gradients = (
            [gradient.detach().float().cpu()] if CAM_METHODS[method].kind == "gradient" else [])
        if batch_size is not None:
            cam.batch_size = batch_size
        if passes is not None:
            cam.model = passes
        per_layer = cam.compute_cam_per_layer(x, [ClassifierOutputTarget(t) for t in targets], eigen_smooth)
        return np.asarray(cam.aggregate_multi_layers(per_layer), np.float32)
    finally:
        cam.activations_and_grads.release()
        cam.activations_and_grads.activations = []
        cam.activations_and_grads.gradients = []
        cam.model = None


@dataclass
class GridResult:
    """One model's maps for several methods x layers x target classes, all from one forward pass."""

    variant: str
    probabilities: np.ndarray  # (classes,)
    maps: dict[tuple[str, str, int], np.ndarray]  # (method, layer, class index) -> (H, W) float32 in [0, 1]
    attention: list[BlockAttention]
    seconds: float


def _grid_explain(explainer: ModelExplainer, x: torch.Tensor, methods: list[str], layers: list[str],
                  targets: list[int], precision: str) -> GridResult:
    """The body of ``ModelExplainer.explain_grid``, under the model's lock."""
    started = time.perf_counter()
    kinds = {CAM_METHODS[m].kind for m in methods}
    ordered = sorted(set(layers), key=TARGET_LAYERS.index)  # the earliest layer is the leaf backprop stops at
    logits, captured = explainer._forward(x, ordered, "gradient" in kinds, precision)
    attention = explainer._read_attention()
    probabilities = torch.softmax(logits.detach().float(), dim=1)[0].cpu().numpy()
    gradients: dict[tuple[str, int], torch.Tensor] = {}
    if "gradient" in kinds:
        for i, target in enumerate(targets):  # one backward per class, each only as deep as the earliest layer
            grads = torch.autograd.grad(logits[0, target], [captured[layer] for layer in ordered],
                                        retain_graph=i < len(targets) - 1)
            gradients.update({(layer, target): g for layer, g in zip(ordered, grads, strict=True)})
    maps = {
        (method, layer, target): library_cam(explainer.model, method, layer, x, captured[layer],
                                             gradients.get((layer, target)), [target])[0]
        for method in methods for layer in layers for target in targets
    }
    return GridResult(explainer.variant, probabilities, maps, attention, time.perf_counter() - started)


class Explainer:
    """A loaded model set, its models kept in memory, each behind its own lock."""

    def __init__(self, model_set: LoadedSet) -> None:
        self.model_set = model_set
        self.explainers = {v: ModelExplainer(v, m, model_set.classes) for v, m in model_set.models.items()}

    @property
    def classes(self) -> list[str]:
        return self.model_set.classes

    def _chosen(self, variants) -> list[str]:
        """The variants asked for (all of the set's when none), refused in one line when the set lacks one."""
        chosen = list(variants) if variants else list(self.explainers)
        unknown = [v for v in chosen if v not in self.explainers]
        if unknown:
            raise AttnvizError(
                f"model set {self.model_set.name!r} has no model {unknown[0]!r}; it has {', '.join(self.explainers)}"
            )
        return chosen

    def explain(
        self,
        image: ImageSource,
        settings: ExplainSettings | None = None,
        progress: ProgressCallback | None = None,
        **overrides,
    ) -> Explanation:
        """Explain ``image`` with the chosen models; ``overrides`` set fields of ``ExplainSettings``."""
        settings = replace(settings or ExplainSettings(), **overrides)
        settings.validate(self.classes)
        variants = self._chosen(settings.variants)
        prepared = preprocess(load_image(image), self.model_set.preprocessing)
        deadline = None if settings.time_limit is None else time.perf_counter() + settings.time_limit
        result = Explanation(view=prepared.view, classes=self.classes, set_name=self.model_set.name, settings=settings)
        for i, variant in enumerate(variants):
            if progress is not None:
                progress(i / len(variants), f"{VARIANT_TITLES[variant]}: {CAM_METHODS[settings.method].label}")
            result.results[variant] = self.explainers[variant].explain(prepared.tensor, settings, progress, deadline)
        names = list(result.results)
        regions = {name: top_region_mask(result.results[name].heatmap) for name in names}
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                result.agreement[f"{a}|{b}"] = masks_iou(regions[a], regions[b])
        return result

    def explain_grid(self, image: ImageSource, methods: list[str] | None = None, layers: list[str] | None = None,
                     targets: list[int | str] | None = None, variants: list[str] | None = None,
                     precision: str = "fp32") -> tuple[np.ndarray, dict[str, GridResult]]:
        """Several methods, layers and target classes per model from one forward pass each (e.g. the Grad-CAM of
        both objects of a two-object scene at every layer). Targets are class indices or names (default: every
        class of the set). Returns the preprocessed view and each model's result."""
        methods = list(methods or ["gradcam"])
        layers = list(layers or ["layer4"])
        indices = []
        for target in targets if targets is not None else range(len(self.classes)):
            if isinstance(target, str):
                if target not in self.classes:
                    raise AttnvizError(f"target class {target!r} is not a class of this set; choose one of "
                                       f"{', '.join(self.classes[:20])}{' ...' if len(self.classes) > 20 else ''}")
                target = self.classes.index(target)
            ExplainSettings(target=int(target)).validate(self.classes)
            indices.append(int(target))
        for method in methods:
            for layer in layers:
                ExplainSettings(method=method, layer=layer, precision=precision).validate(self.classes)
        chosen = self._chosen(variants)
        prepared = preprocess(load_image(image), self.model_set.preprocessing)
        results = {v: self.explainers[v].explain_grid(prepared.tensor, methods, layers, indices, precision)
                   for v in chosen}
        return prepared.view, results


_EXPLAINERS: dict[tuple[str | None, str | None], Explainer] = {}
_EXPLAINERS_LOCK = threading.Lock()


def get_explainer(set_name: str | None = None, weights_dir: str | None = None) -> Explainer:
    """The process-wide explainer of a model set, loaded on first use and then kept."""
    key = (set_name, str(weights_dir) if weights_dir else None)
    with _EXPLAINERS_LOCK:
        if key not in _EXPLAINERS:
            _EXPLAINERS[key] = Explainer(load_model_set(set_name, weights_dir))
        return _EXPLAINERS[key]


def explain(
    image: ImageSource,
    set_name: str | None = None,
    *,
    weights_dir: str | None = None,
    progress: ProgressCallback | None = None,
    **settings,
) -> Explanation:
    """Explain an image with a model set (the built-in one by default); see ``ExplainSettings``."""
    return get_explainer(set_name, weights_dir).explain(image, ExplainSettings(**settings), progress)
