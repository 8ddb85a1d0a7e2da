"""Explain one image with every model of a set: top-k, CAM heatmaps and the recorded attention.

One forward pass per model, made through the capture core (``attnviz.capture``),
serves the probabilities, every attention gate's record and the CAM. Gradient
methods backpropagate from the target logit only as far as the target layer,
with no parameter gradients, and then hand the activations and gradients to
pytorch-grad-cam's own method classes (``attnviz.pgc_adapter``), so the maps
are pytorch-grad-cam's. Score-CAM and augmentation smoothing run extra
passes on altered copies of the image, and the methods that need more than
that pass (``own_call`` in ``attnviz.methods``) run pytorch-grad-cam's own
call; the attention shown always comes from the first pass on the image itself.

    from attnviz import explain, load_model_set
    result = explain("scene.png")              # the built-in set
    result.results["cbam"].top[0].name         # plain data: arrays and numbers
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from attnviz import settings as defaults
from attnviz.attention import family
from attnviz.capture import Capture, model_gates
from attnviz.domain import DomainModel
from attnviz.errors import AttnvizError
from attnviz.images import ImageSource, load_image, preprocess
from attnviz.knockout import KNOCKOUT_VALUES, check_spec, parse_knockout, replacements
from attnviz.methods import CAM_METHODS
from attnviz.models import VARIANTS, target_layer_help, target_layer_names
from attnviz.pgc_adapter import library_call, maps_from_pass
from attnviz.results import (
    BatchResult,
    BlockAttention,
    Explanation,
    GridResult,
    KnockoutResult,
    ModelResult,
    Prediction,
    masks_iou,
    top_region_iou,
    top_region_mask,
)
from attnviz.weights import LoadedSet, load_model_set

__all__ = ["PRECISIONS", "CAM_METHODS", "ExplainSettings", "ModelExplainer", "Explainer", "get_explainer", "explain",
           "BlockAttention", "Explanation", "GridResult", "BatchResult", "ModelResult", "Prediction",
           "masks_iou", "top_region_iou", "top_region_mask"]


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain; every field has the app's default (``attnviz.settings``), which builds it from a front
    end's values with ``build_settings``."""

    method: str = defaults.METHOD
    layer: str = defaults.LAYER
    target: int | None = None  # a class index of the set, or None for each model's own top-1
    top_k: int = defaults.TOP_K
    aug_smooth: bool = False
    eigen_smooth: bool = False
    variants: tuple[str, ...] | None = None  # None: every model of the set
    time_limit: float | None = defaults.TIME_LIMIT_S  # seconds for the slow methods, per request
    score_cam_batch: int = defaults.SCORE_CAM_BATCH
    precision: str = defaults.PRECISION  # "bf16": the image's own pass under bfloat16 autocast; maps stay float32
    knockout: str | None = None  # gates to switch off, e.g. "layer4.*:spatial" (attnviz.knockout); None: none
    knockout_value: str = defaults.KNOCKOUT_VALUE  # what a switched-off gate outputs: "identity" (1) or "mean"

    def validate(self, classes: list[str]) -> None:
        if self.method not in CAM_METHODS:
            raise AttnvizError(
                f"unknown CAM method {self.method!r}; choose one of {', '.join(CAM_METHODS)}",
                code="choice",
            )
        refusal = CAM_METHODS[self.method].refusal(self.aug_smooth, self.eigen_smooth)
        if refusal:
            raise AttnvizError(refusal, code="choice")
        if not any(self.layer in _valid_layers(v) for v in VARIANTS):
            raise AttnvizError(f"unknown target layer {self.layer!r}; choose {target_layer_help()}", code="choice")
        if self.target is not None and not 0 <= self.target < len(classes):
            raise AttnvizError(
                f"target class {self.target} is outside this set's {len(classes)} classes",
                code="choice",
            )
        if self.top_k < 1:
            raise AttnvizError("top-k must be at least 1", code="choice")
        if self.precision not in PRECISIONS:
            raise AttnvizError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}",
                code="choice",
            )
        if self.knockout_value not in KNOCKOUT_VALUES:
            raise AttnvizError(f"unknown knock-out value {self.knockout_value!r}; choose one of "
                               f"{', '.join(KNOCKOUT_VALUES)}", code="choice")


@functools.cache
def _valid_layers(variant: str) -> frozenset[str]:
    return frozenset(target_layer_names(variant))


def check_layer(layer: str, variants: list[str]) -> None:
    """One line when a chosen model has no such target layer (e.g. an attention module in the plain ResNet50)."""
    for variant in variants:
        if layer not in _valid_layers(variant):
            raise AttnvizError(f"{family(variant).title} has no target layer {layer!r}; choose "
                               f"{target_layer_help()}", code="choice")


ProgressCallback = Callable[[float, str], None]


class _DeadlineModel(nn.Module):
    """Wraps a model for a perturbation method's extra passes (``setup`` passes, then one per batch of the
    ``total`` altered copies): reports progress and stops at the deadline."""

    def __init__(
        self,
        model: nn.Module,
        total: int,
        batch: int,
        report: ProgressCallback | None,
        deadline: float | None,
        label: str,
        setup: int = 0,
    ) -> None:
        super().__init__()
        self.inner = model
        self.total_batches = setup + max(1, -(-total // batch))
        self.done = 0
        self.report = report
        self.deadline = deadline
        self.label = label
        self.started = time.perf_counter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise AttnvizError(
                "the CAM method ran past the time limit; choose a faster method (Grad-CAM), an "
                "earlier layer with fewer channels, or fewer models",
                code="time_limit",
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


class ModelExplainer:
    """One model of a set, explained through the capture core (which owns its hooks and its lock)."""

    def __init__(self, variant: str, model: nn.Module, classes: list[str],
                 gate_means: Callable[[], dict[str, torch.Tensor]] | None = None,
                 domain: DomainModel | None = None) -> None:
        """``gate_means``: loads the stored mean output of every gate (for knock-out with value "mean");
        ``domain``: the fitted out-of-domain scorer (None: the model is not calibrated)."""
        self.variant = variant
        self.domain = domain
        self.model = model.eval()
        self.classes = classes
        self.gates = model_gates(self.model)
        self._gate_means = gate_means
        for p in self.model.parameters():  # inference only: no parameter ever needs a gradient
            p.requires_grad_(False)

    def layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def gate_means(self) -> dict[str, torch.Tensor] | None:
        return None if self._gate_means is None else self._gate_means()

    def explain(
        self,
        x: torch.Tensor,
        settings: ExplainSettings,
        progress: ProgressCallback | None = None,
        deadline: float | None = None,
        knockout_gates: set[str] | None = None,
    ) -> ModelResult:
        """One image (a batch of one): top-k, the heatmap of the target class and every block's attention; with
        ``settings.knockout``, the same again with those gates switched off (``knockout_gates``: the gate names
        the spec may use, default this model's)."""
        started = time.perf_counter()
        probabilities, heatmap, attention, domain_score = self._pass(x, settings, settings.target, progress,
                                                                     deadline, score_domain=True)
        target_index = int(np.argmax(probabilities)) if settings.target is None else settings.target  # as _pass
        result = ModelResult(
            variant=self.variant,
            probabilities=probabilities,
            top=self._top(probabilities, settings.top_k),
            target=Prediction(target_index, self.classes[target_index], float(probabilities[target_index])),
            heatmap=heatmap,
            attention=attention,
            seconds=0.0,
            domain_score=domain_score,
            domain_threshold=None if domain_score is None else self.domain.threshold,
            out_of_domain=None if domain_score is None else bool(self.domain.flags(np.array([domain_score]))[0]),
        )
        if settings.knockout:
            result.knockout = self._knockout(x, settings, result, progress, deadline, knockout_gates)
        result.seconds = time.perf_counter() - started
        return result

    def _top(self, probabilities: np.ndarray, k: int) -> list[Prediction]:
        order = np.argsort(-probabilities, kind="stable")
        return [Prediction(int(i), self.classes[i], float(probabilities[i])) for i in order[: min(k, len(order))]]

    def _pass(self, x: torch.Tensor, settings: ExplainSettings, target: int | None, progress, deadline,
              replace: dict | None = None, score_domain: bool = False
              ) -> tuple[np.ndarray, np.ndarray, list[BlockAttention], float | None]:
        """Probabilities, the heatmap of ``target`` (None: the top-1), the records of one capture and, with
        ``score_domain`` and a fitted scorer, the out-of-domain score from the same pass (else None)."""
        method = CAM_METHODS[settings.method]
        needs_grad = method.pass_gradient and not settings.aug_smooth  # own-call methods make their own passes
        scoring = score_domain and self.domain is not None
        with Capture(self.model, [settings.layer], needs_grad=needs_grad, replace=replace, gates=self.gates,
                     features=scoring) as capture:
            logits = capture.run(x, settings.precision)
            domain_score = float(self.domain.score(capture.features, logits)[0]) if scoring else None
            probabilities = torch.softmax(logits.detach().float(), dim=1)[0].cpu().numpy()
            target_index = int(np.argmax(probabilities)) if target is None else target
            layer = self.layer(settings.layer)
            if settings.aug_smooth:  # several passes on altered copies: pytorch-grad-cam's own call
                heatmap = library_call(self.model, settings.method, layer, x, target_index, aug_smooth=True,
                                       eigen_smooth=settings.eigen_smooth)
            else:
                gradient = capture.gradients(logits, [target_index])[settings.layer] if needs_grad else None
                passes = None
                if method.kind == "perturbation":
                    passes = _DeadlineModel(self.model, capture.activations[settings.layer].shape[1],
                                            settings.score_cam_batch, progress, deadline, family(self.variant).title,
                                            method.setup_passes)
                heatmap = maps_from_pass(self.model, settings.method, layer, x, capture.activations[settings.layer],
                                         gradient, [target_index], settings.eigen_smooth, settings.score_cam_batch,
                                         passes)[0]
            attention = capture.records(0)
        return probabilities, np.asarray(heatmap, np.float32), attention, domain_score

    def _knockout(self, x, settings: ExplainSettings, trained: ModelResult, progress, deadline,
                  knockout_gates: set[str] | None) -> KnockoutResult:
        """The same image and target class with the spec's gates switched off; unaffected without such gates."""
        chosen = parse_knockout(settings.knockout, self.gates, knockout_gates)
        means = self.gate_means() if settings.knockout_value == "mean" and chosen else None
        replace = replacements(chosen, settings.knockout_value, means)
        target = trained.target.index
        if chosen:
            probabilities, heatmap, attention, _ = self._pass(x, settings, target, progress, deadline, replace)
        else:
            probabilities, heatmap, attention = trained.probabilities, trained.heatmap, trained.attention
        return KnockoutResult(
            spec=settings.knockout,
            value=settings.knockout_value,
            gates=[g.key for g in chosen],
            probabilities=probabilities,
            top=self._top(probabilities, settings.top_k),
            target=Prediction(target, self.classes[target], float(probabilities[target])),
            heatmap=heatmap,
            attention=attention,
            target_change=float(probabilities[target] - trained.target.probability),
            iou_top20=top_region_iou(trained.heatmap, heatmap),
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
        started = time.perf_counter()
        needs_grad = any(CAM_METHODS[m].pass_gradient for m in methods)
        with Capture(self.model, layers, needs_grad=needs_grad, gates=self.gates) as capture:
            logits = capture.run(x, precision)
            probabilities = torch.softmax(logits.detach().float(), dim=1)[0].cpu().numpy()
            gradients: dict[tuple[str, int], torch.Tensor] = {}
            if needs_grad:
                for i, target in enumerate(targets):  # one backward per class, only as deep as the earliest layer
                    found = capture.gradients(logits, [target], retain_graph=i < len(targets) - 1)
                    gradients.update({(layer, target): g for layer, g in found.items()})
            maps = {
                (method, layer, target): maps_from_pass(self.model, method, self.layer(layer), x,
                                                        capture.activations[layer], gradients.get((layer, target)),
                                                        [target])[0]
                for method in methods for layer in layers for target in targets
            }
            attention = capture.records(0)
        return GridResult(self.variant, probabilities, maps, attention, time.perf_counter() - started)

    def explain_batch(self, x: torch.Tensor, targets: list[int], configs: list[tuple[str, str]],
                      scorecam_batch: int = 64, precision: str = "fp32",
                      replace: dict[str, torch.Tensor | float] | None = None) -> BatchResult:
        """A batch of images, each with its own target class: one forward pass capturing every layer the
        (method, layer) configs need, one backward from the targets' logits to the earliest of them, then every
        map from those activations and gradients, and every block's records. Score-CAM runs its own passes
        quietly (no progress bar per image). ``replace``: gates switched off (gate key -> output; knock-out)."""
        layers = list(dict.fromkeys(layer for _, layer in configs))
        needs_grad = any(CAM_METHODS[m].pass_gradient for m, _ in configs)
        with Capture(self.model, layers, needs_grad=needs_grad, replace=replace, gates=self.gates) as capture:
            logits = capture.run(x, precision)
            gradients = capture.gradients(logits, targets) if needs_grad else {}
            with contextlib.redirect_stderr(io.StringIO()):
                maps = {(method, layer): maps_from_pass(self.model, method, self.layer(layer), x,
                                                        capture.activations[layer], gradients.get(layer), targets,
                                                        batch_size=scorecam_batch)
                        for method, layer in configs}
            records = capture.block_records()
            kinds = {gate.spec.record: gate.spec.kind for gate in capture.gates}
        return BatchResult(logits=logits.detach().float(), maps=maps, records=records, kinds=kinds)


class Explainer:
    """A loaded model set, its models kept in memory (the capture core serialises the passes on each)."""

    def __init__(self, model_set: LoadedSet) -> None:
        self.model_set = model_set
        self.explainers = {v: ModelExplainer(v, m, model_set.classes, model_set.gate_means_loader(v),
                                             model_set.domain_model(v))
                           for v, m in model_set.models.items()}

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
            , code="choice")
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
        check_layer(settings.layer, variants)
        gate_names = {g.spec.name for v in variants for g in self.explainers[v].gates}
        if settings.knockout:
            check_spec(settings.knockout, gate_names)  # one line for a bad spec, before any model runs
        prepared = preprocess(load_image(image), self.model_set.preprocessing)
        deadline = None if settings.time_limit is None else time.perf_counter() + settings.time_limit
        result = Explanation(view=prepared.view, classes=self.classes, set_name=self.model_set.name, settings=settings)
        for i, variant in enumerate(variants):
            if progress is not None:
                progress(i / len(variants), f"{family(variant).title}: {CAM_METHODS[settings.method].label}")
            result.results[variant] = self.explainers[variant].explain(prepared.tensor, settings, progress, deadline,
                                                                       gate_names)
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
        indices = [defaults.resolve_target(t, self.classes) for t in (targets if targets is not None
                                                                       else range(len(self.classes)))]
        for method in methods:
            for layer in layers:
                ExplainSettings(method=method, layer=layer, precision=precision).validate(self.classes)
        chosen = self._chosen(variants)
        for layer in layers:
            check_layer(layer, chosen)
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
    """Explain an image with a model set (the built-in one by default). ``settings`` are those of
    ``attnviz.settings.build_settings``: e.g. ``method="layercam"``, ``target="dog"`` (a name or an index),
    ``models=["se", "cbam"]``, ``knockout="layer4.*:spatial"``."""
    explainer = get_explainer(set_name, weights_dir)
    if "variants" in settings:  # ExplainSettings' own name for the models
        settings["models"] = settings.pop("variants")
    built = defaults.build_settings(explainer.classes, explainer.explainers, **settings)
    return explainer.explain(image, built, progress)
