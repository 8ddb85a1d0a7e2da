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
import io
import time
from collections.abc import Callable, Sequence
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
from attnviz.knockout import check_spec, parse_knockout, replacements
from attnviz.methods import CAM_METHODS
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
from attnviz.set_cache import SetCache, model_bytes, set_bytes_on_load
from attnviz.settings import PRECISIONS, ExplainSettings, check_layer
from attnviz.weights import LoadedSet, load_model_set

__all__ = ["PRECISIONS", "CAM_METHODS", "ExplainSettings", "ModelExplainer", "Explainer", "get_explainer", "explain",
           "explain_many",
           "BlockAttention", "Explanation", "GridResult", "BatchResult", "ModelResult", "Prediction",
           "masks_iou", "top_region_iou", "top_region_mask"]


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


@dataclass
class _Passed:
    """What one capture of a batch gave, per image."""

    probabilities: np.ndarray  # (B, classes)
    heatmaps: np.ndarray  # (B, H, W) float32 in [0, 1]
    attention: list[list[BlockAttention]]
    targets: list[int]  # the class each heatmap explains
    domain: np.ndarray | None  # (B,) out-of-domain scores; None without a fitted scorer


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
        self.device = next(model.parameters()).device  # where each image is moved before its pass
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
        return self.explain_images(x, settings, progress, deadline, knockout_gates)[0]

    def explain_images(
        self,
        x: torch.Tensor,
        settings: ExplainSettings,
        progress: ProgressCallback | None = None,
        deadline: float | None = None,
        knockout_gates: set[str] | None = None,
    ) -> list[ModelResult]:
        """``explain`` for a batch of images in one pass (and one backward): one result per image, each the same
        as that image explained alone. ``seconds`` is the batch's time shared equally."""
        started = time.perf_counter()
        x = x.to(self.device)
        found = self._pass(x, settings, [settings.target] * len(x), progress, deadline, score_domain=True)
        results = []
        for i, probabilities in enumerate(found.probabilities):
            target_index = found.targets[i]
            score = None if found.domain is None else float(found.domain[i])
            results.append(ModelResult(
                variant=self.variant,
                probabilities=probabilities,
                top=self._top(probabilities, settings.top_k),
                target=Prediction(target_index, self.classes[target_index], float(probabilities[target_index])),
                heatmap=found.heatmaps[i],
                attention=found.attention[i],
                seconds=0.0,
                domain_score=score,
                domain_threshold=None if score is None else self.domain.threshold,
                out_of_domain=None if score is None else bool(self.domain.flags(np.array([score]))[0]),
            ))
        if settings.knockout:
            for result, knocked in zip(results, self._knockout(x, settings, results, progress, deadline,
                                                               knockout_gates), strict=True):
                result.knockout = knocked
        for result in results:
            result.seconds = (time.perf_counter() - started) / len(results)
        return results

    def _top(self, probabilities: np.ndarray, k: int) -> list[Prediction]:
        order = np.argsort(-probabilities, kind="stable")
        return [Prediction(int(i), self.classes[i], float(probabilities[i])) for i in order[: min(k, len(order))]]

    def _pass(self, x: torch.Tensor, settings: ExplainSettings, targets: list[int | None], progress, deadline,
              replace: dict | None = None, score_domain: bool = False) -> _Passed:
        """One capture of the batch: probabilities, each image's heatmap of its target (None: its top-1), its
        records and, with ``score_domain`` and a fitted scorer, the out-of-domain scores of the same pass."""
        method = CAM_METHODS[settings.method]
        needs_grad = method.pass_gradient and not settings.aug_smooth  # own-call methods make their own passes
        scoring = score_domain and self.domain is not None
        with Capture(self.model, [settings.layer], needs_grad=needs_grad, replace=replace, gates=self.gates,
                     features=scoring) as capture:
            logits = capture.run(x, settings.precision)
            domain = np.asarray(self.domain.score(capture.features, logits)) if scoring else None
            probabilities = torch.softmax(logits.detach().float(), dim=1).cpu().numpy()
            indices = [int(np.argmax(p)) if t is None else t for p, t in zip(probabilities, targets, strict=True)]
            layer = self.layer(settings.layer)
            if settings.aug_smooth:  # several passes on altered copies: pytorch-grad-cam's own call, image by image
                heatmaps = np.stack([library_call(self.model, settings.method, layer, x[i : i + 1], t, aug_smooth=True,
                                                  eigen_smooth=settings.eigen_smooth) for i, t in enumerate(indices)])
            else:
                gradient = capture.gradients(logits, indices)[settings.layer] if needs_grad else None
                passes = None
                if method.kind == "perturbation":
                    passes = _DeadlineModel(self.model, capture.activations[settings.layer].shape[1] * len(x),
                                            settings.score_cam_batch, progress, deadline, family(self.variant).title,
                                            method.setup_passes)
                heatmaps = maps_from_pass(self.model, settings.method, layer, x, capture.activations[settings.layer],
                                          gradient, indices, settings.eigen_smooth, settings.score_cam_batch, passes)
            attention = [capture.records(i) for i in range(len(x))]
        return _Passed(probabilities, np.asarray(heatmaps, np.float32), attention, indices, domain)

    def _knockout(self, x, settings: ExplainSettings, trained: list[ModelResult], progress, deadline,
                  knockout_gates: set[str] | None) -> list[KnockoutResult]:
        """The same images and target classes with the spec's gates switched off; unaffected without such gates."""
        chosen = parse_knockout(settings.knockout, self.gates, knockout_gates)
        means = self.gate_means() if settings.knockout_value == "mean" and chosen else None
        replace = replacements(chosen, settings.knockout_value, means)
        targets = [r.target.index for r in trained]
        found = self._pass(x, settings, targets, progress, deadline, replace) if chosen else None
        out = []
        for i, (result, target) in enumerate(zip(trained, targets, strict=True)):
            if found is None:
                probabilities, heatmap, attention = result.probabilities, result.heatmap, result.attention
            else:
                probabilities, heatmap, attention = found.probabilities[i], found.heatmaps[i], found.attention[i]
            out.append(KnockoutResult(
                spec=settings.knockout,
                value=settings.knockout_value,
                gates=[g.key for g in chosen],
                probabilities=probabilities,
                top=self._top(probabilities, settings.top_k),
                target=Prediction(target, self.classes[target], float(probabilities[target])),
                heatmap=heatmap,
                attention=attention,
                target_change=float(probabilities[target] - result.target.probability),
                iou_top20=top_region_iou(result.heatmap, heatmap),
            ))
        return out

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
        x = x.to(self.device)
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

    def explain_batch(self, x: torch.Tensor, targets: Sequence[int | None], configs: list[tuple[str, str]],
                      scorecam_batch: int = defaults.SCORE_CAM_BATCH, precision: str = "fp32",
                      replace: dict[str, torch.Tensor | float] | None = None) -> BatchResult:
        """A batch of images, each with its own target class (None: the image's top-1 in this pass): one forward
        pass capturing every layer the (method, layer) configs need, one backward from the targets' logits to the
        earliest of them, then every map from those activations and gradients, and every block's records.
        Score-CAM runs its own passes quietly (no progress bar per image). ``replace``: gates switched off (gate
        key -> output; knock-out)."""
        x = x.to(self.device)
        layers = list(dict.fromkeys(layer for _, layer in configs))
        needs_grad = any(CAM_METHODS[m].pass_gradient for m, _ in configs)
        with Capture(self.model, layers, needs_grad=needs_grad, replace=replace, gates=self.gates) as capture:
            logits = capture.run(x, precision)
            top1 = logits.detach().argmax(dim=1).tolist()
            targets = [top1[i] if t is None else int(t) for i, t in enumerate(targets)]
            gradients = capture.gradients(logits, targets) if needs_grad else {}
            with contextlib.redirect_stderr(io.StringIO()):
                maps = {(method, layer): maps_from_pass(self.model, method, self.layer(layer), x,
                                                        capture.activations[layer], gradients.get(layer), targets,
                                                        batch_size=scorecam_batch)
                        for method, layer in configs}
            records = capture.block_records()
            kinds = {gate.spec.record: gate.spec.kind for gate in capture.gates}
        return BatchResult(logits=logits.detach().float().cpu(), maps=maps, records=records, kinds=kinds,
                           targets=targets)


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
        return self.explain_many([image], settings, progress, batch_size=1, **overrides)[0]

    def explain_many(
        self,
        images: Sequence[ImageSource],
        settings: ExplainSettings | None = None,
        progress: ProgressCallback | None = None,
        batch_size: int = 8,
        **overrides,
    ) -> list[Explanation]:
        """Explain several images, ``batch_size`` at a time in one pass per model: the same explanations as one
        image at a time (maps within float rounding), in the order given. Every image is read and checked before
        any model runs; a bad one raises its one-line error. The time limit holds for each batch."""
        settings = replace(settings or ExplainSettings(), **overrides)
        settings.validate(self.classes)
        if batch_size < 1:
            raise AttnvizError(f"the batch size must be at least 1, not {batch_size}", code="choice")
        variants = self._chosen(settings.variants)
        check_layer(settings.layer, variants)
        gate_names = {g.spec.name for v in variants for g in self.explainers[v].gates}
        if settings.knockout:
            check_spec(settings.knockout, gate_names)  # one line for a bad spec, before any model runs
        prepared = [preprocess(load_image(image), self.model_set.preprocessing) for image in images]
        steps = len(variants) * -(-len(prepared) // batch_size)
        explanations = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start : start + batch_size]
            x = torch.cat([p.tensor for p in chunk])
            deadline = None if settings.time_limit is None else time.perf_counter() + settings.time_limit
            found = {}
            for i, variant in enumerate(variants):
                if progress is not None:
                    step = start // batch_size * len(variants) + i
                    progress(step / steps, f"{family(variant).title}: {CAM_METHODS[settings.method].label}")
                found[variant] = self.explainers[variant].explain_images(x, settings, progress, deadline,
                                                                         gate_names)
            for i, p in enumerate(chunk):
                result = Explanation(view=p.view, classes=self.classes, set_name=self.model_set.name,
                                     settings=settings, results={v: found[v][i] for v in variants})
                result.agreement = _agreement(result)
                explanations.append(result)
        return explanations

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


def _agreement(explanation: Explanation) -> dict[str, float]:
    """"a|b" -> the IoU of the two models' top-20 % regions, for every pair of models shown."""
    names = list(explanation.results)
    regions = {name: top_region_mask(explanation.results[name].heatmap) for name in names}
    return {f"{a}|{b}": masks_iou(regions[a], regions[b]) for i, a in enumerate(names) for b in names[i + 1 :]}


EXPLAINERS: SetCache[Explainer] = SetCache(lambda key: Explainer(load_model_set(*key)),
                                           lambda explainer: model_bytes(explainer.model_set.models),
                                           estimate=lambda key: set_bytes_on_load(*key[:2]))


def get_explainer(set_name: str | None = None, weights_dir: str | None = None, device: str = "cpu") -> Explainer:
    """The process-wide explainer of a model set, loaded on first use and then kept while the loaded sets fit
    their memory budget (``attnviz.set_cache``: least recently used out first). ``device``: where its models run
    (images are moved there; every result comes back as numpy arrays)."""
    return EXPLAINERS.get((set_name, str(weights_dir) if weights_dir else None, device))


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


def explain_many(
    images: Sequence[ImageSource],
    set_name: str | None = None,
    *,
    weights_dir: str | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 8,
    **settings,
) -> list[Explanation]:
    """``explain`` for several images, ``batch_size`` at a time in one pass per model; the same settings."""
    explainer = get_explainer(set_name, weights_dir)
    if "variants" in settings:
        settings["models"] = settings.pop("variants")
    built = defaults.build_settings(explainer.classes, explainer.explainers, **settings)
    return explainer.explain_many(images, built, progress, batch_size)
