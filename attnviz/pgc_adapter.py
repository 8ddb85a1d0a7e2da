"""The one place that uses pytorch-grad-cam's insides.

attnviz computes the activations and gradients once per pass (``attnviz.capture``) and hands them to
pytorch-grad-cam's own method classes, so every map is pytorch-grad-cam's maths on that pass: the same maps
as its default call (guarded by tests/test_explain_equivalence.py), without its full backward pass and
parameter gradients. Callers hold the model's capture (and so its lock) around every function here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from attnviz.methods import CAM_METHODS


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
        per_layer = cam.compute_cam_per_layer(x, _targets(targets), eigen_smooth)
        return np.asarray(cam.aggregate_multi_layers(per_layer), np.float32)
    finally:
        if method == "ablationcam":
            _put_back(model, layer)
        recorder.release()
        recorder.activations = []
        recorder.gradients = []
        cam.model = None


def _make_cam(method: str, model: nn.Module, layer: nn.Module):
    """pytorch-grad-cam's class for ``method`` at ``layer``. Ablation-CAM gets an ablation layer of its own: the
    class's default argument is one instance shared by every call (and so by models explained at once)."""
    cls = cam_class(method)
    if method == "ablationcam":
        from pytorch_grad_cam.ablation_layer import AblationLayer

        return cls(model, target_layers=[layer], ablation_layer=AblationLayer())
    return cls(model, target_layers=[layer])


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
    # no weight gradients needed; the baseline's class backpropagates too, though it uses only the gradient's shape
    inputs = x.clone().requires_grad_(CAM_METHODS[method].kind in ("gradient", "baseline"))
    cam = _make_cam(method, model, layer)
    try:
        with torch.enable_grad():
            return np.asarray(cam(inputs, _targets([target]), aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)[0],
                              np.float32)
    finally:
        if method == "ablationcam":
            _put_back(model, layer)
        cam.activations_and_grads.release()  # its hooks come off the model
