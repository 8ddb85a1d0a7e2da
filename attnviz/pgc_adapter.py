"""The one place that uses pytorch-grad-cam's insides.

attnviz computes the activations and gradients once per pass (``attnviz.capture``) and hands them to
pytorch-grad-cam's own method classes, so every map is pytorch-grad-cam's maths on that pass: the same maps
as its default call (guarded by tests/test_explain_equivalence.py), without its full backward pass and
parameter gradients. Callers hold the model's capture (and so its lock) around every function here.

Methods whose maths needs more than that pass (``CamMethod.own_call``: FinerCAM, ShapleyCAM, RefineCAM,
FullGrad, Guided Grad-CAM) run pytorch-grad-cam's own call (``library_call``), one image at a time; whatever
its classes put on the model (hooks, Guided backprop's ReLUs) comes off again, after success or failure.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from attnviz.errors import AttnvizError
from attnviz.methods import CAM_METHODS
from attnviz.models import TARGET_LAYERS


def cam_class(key: str) -> type:
    """pytorch-grad-cam's class for a method key."""
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CAM_METHODS[key].library_class)


def _targets(classes: list[int]) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(int(c)) for c in classes]


def maps_from_pass(model: nn.Module, method: str, layer: nn.Module, x: torch.Tensor, activation: torch.Tensor,
                   gradient: torch.Tensor | None, targets: list[int], eigen_smooth: bool = False,
                   batch_size: int | None = None, passes: nn.Module | None = None) -> np.ndarray:
    """pytorch-grad-cam's class for ``method`` at ``layer``, fed the activation (and gradient) of a pass made
    elsewhere instead of running its own: (batch, H, W) float32 maps in [0, 1], one per image and its target.

    Perturbation methods still run their own passes on ``x`` (in batches of ``batch_size``), through
    ``passes`` when given (e.g. a model that reports progress and keeps a deadline) instead of ``model``.
    """
    if CAM_METHODS[method].own_call:  # its own passes, one image at a time (the one pass is not enough)
        return np.stack([library_call(model, method, layer, x[i : i + 1], target, eigen_smooth=eigen_smooth)
                         for i, target in enumerate(targets)])
    if method == "gradcam" and not eigen_smooth and gradient is not None and activation.dim() == 4:
        return grad_cam(activation, gradient, (x.shape[-1], x.shape[-2]))
    cam = _make_cam(method, passes if passes is not None else model, layer)
    recorder = cam.activations_and_grads
    try:
        recorder.release()  # its hooks come off at once: the pass was made already
        recorder.activations = [activation.detach().float().cpu()]
        kind = CAM_METHODS[method].kind
        if kind == "gradient":
            recorder.gradients = [gradient.detach().float().cpu()]
        elif kind == "baseline":  # RandomCAM reads only the gradient's (batch, channels): the activation's
            recorder.gradients = [activation.detach().float().cpu()]
        else:
            recorder.gradients = []
        if batch_size is not None:
            cam.batch_size = batch_size
        if method == "scorecam":  # the same weights, without all of its masked copies in memory at once
            cam.get_cam_weights = lambda inputs, _layer, targets, activations, _grads: score_cam_weights(
                cam.model, inputs, targets, activations, getattr(cam, "batch_size", 16))
        per_layer = cam.compute_cam_per_layer(x, _targets(targets), eigen_smooth)
        return np.asarray(cam.aggregate_multi_layers(per_layer), np.float32)
    finally:
        if method == "ablationcam":
            _put_back(model, layer)
        recorder.release()
        recorder.activations = []
        recorder.gradients = []
        cam.model = None


def grad_cam(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM's maps, (batch, H, W) float32 in [0, 1], computed as pytorch-grad-cam's ``GradCAM`` computes them
    from a (batch, C, h, w) activation and its gradient: channel weights the gradient's spatial mean, the
    weighted sum over channels through a ReLU, scaled to [0, 1], resized bilinearly to ``size`` (width,
    height; OpenCV's bilinear resize, as it does), clipped at 0 and scaled again: the same numbers to the bit.

    The page's default method, so written out here: importing pytorch-grad-cam (with scikit-learn and SciPy
    behind it) costs about a second, which the app's start-up no longer pays (OpenCV alone: 35 ms). The maps
    equal its class's (tests/test_explain_equivalence.py); every other method goes through the class itself.
    """
    activations = activation.detach().float().cpu().numpy()
    weights = np.mean(gradient.detach().float().cpu().numpy(), axis=(2, 3))
    cams = np.maximum((weights[:, :, None, None] * activations).sum(axis=1), 0)
    resized = np.stack([cv2.resize(np.float32(cam), size) for cam in _scale(cams)])  # its very call: equal bits
    return _scale(np.maximum(resized, 0))


def _scale(maps: np.ndarray) -> np.ndarray:
    """Each map minus its minimum, over 1e-7 plus its new maximum (pytorch-grad-cam's ``scale_cam_image``)."""
    out = np.empty(maps.shape, np.float32)
    for i, values in enumerate(maps):
        values = values - np.min(values)
        out[i] = values / (1e-7 + np.max(values))
    return out


def score_cam_weights(model: nn.Module, x: torch.Tensor, targets: list, activations: np.ndarray,
                      batch_size: int) -> np.ndarray:
    """Score-CAM's channel weights as pytorch-grad-cam's ``ScoreCAM.get_cam_weights`` computes them (each
    channel's activation upsampled to the input, bilinear with aligned corners, scaled to [0, 1], times the
    image; the target's score of each masked image; softmax over the channels), ``batch_size`` channels at a
    time: its own method builds every masked copy first (channels x 3 x H x W floats per image, 1.2 GB at
    layer4 and 224 px), this loop only a batch's."""
    weights = np.empty(activations.shape[:2], np.float32)
    with torch.no_grad():
        for b, target in enumerate(targets):
            image = x[b : b + 1]
            scores = []
            for start in range(0, activations.shape[1], batch_size):
                chunk = torch.from_numpy(activations[b : b + 1, start : start + batch_size]).to(x.device)
                up = torch.nn.functional.interpolate(chunk, size=x.shape[-2:], mode="bilinear", align_corners=True)[0]
                flat = up.view(up.shape[0], -1)
                low, high = flat.min(dim=1)[0][:, None, None], flat.max(dim=1)[0][:, None, None]
                masked = image * ((up - low) / (high - low + 1e-8))[:, None]
                scores.extend(float(target(o).cpu()) for o in model(masked))
            weights[b] = torch.softmax(torch.tensor(scores), dim=-1).numpy()
    return weights


def _make_cam(method: str, model: nn.Module, layer: nn.Module):
    """pytorch-grad-cam's class for ``method`` at ``layer``. Ablation-CAM gets an ablation layer of its own: the
    class's default argument is one instance shared by every call (and so by models explained at once)."""
    cls = cam_class(method)
    if method == "ablationcam":
        from pytorch_grad_cam.ablation_layer import AblationLayer

        return cls(model, target_layers=[layer], ablation_layer=AblationLayer())
    if method == "fullgrad":  # every bias layer is its target (given one, it says it ignores it)
        return cls(model, target_layers=[])
    if method == "refinecam":
        return cls(model, target_layers=refine_layers(model, layer))
    return cls(model, target_layers=[layer])


def refine_layers(model: nn.Module, layer: nn.Module) -> list[nn.Module]:
    """RefineCAM's layers: the target layer and the output of every stage after the one it is in (at layer2:
    layer2, layer3, layer4; at layer4 only layer4, and the map is Grad-CAM++'s)."""
    name = next((n for n, module in model.named_modules() if module is layer), "")
    stage = name.split(".")[0]
    later = TARGET_LAYERS[TARGET_LAYERS.index(stage) + 1 :] if stage in TARGET_LAYERS else ()
    return [layer, *(model.get_submodule(s) for s in later)]


def _release(cam) -> None:
    """Take the hooks of ``cam`` (and of the CAMs a meta-method holds) off the model."""
    for inner in getattr(cam, "base_cam_per_layer", None) or [getattr(cam, "base_cam", cam)]:
        inner.activations_and_grads.release()


def _put_back(model: nn.Module, layer: nn.Module) -> None:
    """Ablation-CAM swaps the target layer for its ablation layer during its passes and swaps it back only when
    they end: after a failure (e.g. the time limit) the model would keep the ablation layer. Put ``layer`` back.
    Only Ablation-CAM swaps layers, so only its calls walk the model (not every map's hot path)."""
    from pytorch_grad_cam.ablation_layer import AblationLayer

    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, AblationLayer):
                parent._modules[name] = layer


def library_call(model: nn.Module, method: str, layer: nn.Module, x: torch.Tensor, target: int,
                 aug_smooth: bool = False, eigen_smooth: bool = False) -> np.ndarray:
    """pytorch-grad-cam's own call (its own passes, e.g. test-time augmentation smoothing): one (H, W) map."""
    refusal = CAM_METHODS[method].refusal(aug_smooth, eigen_smooth)
    if refusal:
        raise AttnvizError(refusal)
    if method == "guidedgradcam":
        return guided_grad_cam(model, layer, x, target, aug_smooth, eigen_smooth)
    # no weight gradients needed; the baseline's class backpropagates too, though it uses only the gradient's shape
    inputs = x.clone().requires_grad_(CAM_METHODS[method].kind in ("gradient", "baseline"))
    cam = _make_cam(method, model, layer)
    # ShapleyCAM differentiates the gradient again: where it does not depend on the activations (e.g. layer4,
    # before a linear head) its graph must still exist, as it does when parameters need gradients (its users'
    # case); autograd.grad fills no parameter's .grad, and every flag is put back
    frozen = [p for p in model.parameters() if not p.requires_grad] if method == "shapleycam" else []
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            if method == "finercam":  # no target object: the target index, compared with its nearest classes
                maps = cam(inputs, None, eigen_smooth=eigen_smooth, target_idx=int(target))
            elif method == "refinecam":  # no smoothing options (see its row in attnviz.methods)
                maps = cam(inputs, _targets([target]))
            else:
                maps = cam(inputs, _targets([target]), aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
            return np.asarray(maps[0], np.float32)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        if method == "ablationcam":
            _put_back(model, layer)
        _release(cam)  # its hooks come off the model


def guided_backprop(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """pytorch-grad-cam's GuidedBackpropReLUModel on one image: the (H, W, 3) gradient of the target logit with
    respect to the image, every ReLU's backward passing only positive gradients of positive inputs.

    The class swaps every ``nn.ReLU`` for its guided one and then for new ``nn.ReLU()``s (not in-place, not the
    model's own modules) and sets the model to eval mode; the model's own ReLU modules and every module's mode
    are put back here, after any failure too."""
    from pytorch_grad_cam import GuidedBackpropReLUModel

    relus = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, nn.ReLU)]
    modes = [(module, module.training) for module in model.modules()]
    try:
        with torch.enable_grad():
            return np.asarray(GuidedBackpropReLUModel(model)(x.detach().clone(), int(target)), np.float32)
    finally:
        for parent, name, child in relus:
            parent._modules[name] = child
        for module, training in modes:
            module.training = training


def guided_grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int, aug_smooth: bool = False,
                    eigen_smooth: bool = False) -> np.ndarray:
    """Guided Grad-CAM as pytorch-grad-cam's README combines it (guided backprop times the Grad-CAM map on every
    colour channel), made an (H, W) map in [0, 1]: the absolute value, its maximum over the colour channels,
    min-max scaled."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    cam = library_call(model, "gradcam", layer, x, target, aug_smooth, eigen_smooth)
    pixels = np.abs(guided_backprop(model, x, target) * cam[:, :, None]).max(axis=2)
    return np.asarray(scale_cam_image(pixels[None])[0], np.float32)
