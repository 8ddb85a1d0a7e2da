"""The CAM method table: one row per method, the key users pass, its label, its kind and its
pytorch-grad-cam class.

Kinds: "gradient" methods need the target layer's activations and the target logit's gradient there;
"activation" methods need the activations only; "perturbation" methods run passes of their own on altered
copies of the image (and so take time, with progress and a time limit).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CamMethod:
    key: str
    label: str
    kind: str  # "gradient", "activation" or "perturbation"
    library_class: str  # the class's name in pytorch_grad_cam


CAM_METHODS: dict[str, CamMethod] = {
    m.key: m
    for m in (
        CamMethod("gradcam", "Grad-CAM", "gradient", "GradCAM"),
        CamMethod("gradcam++", "Grad-CAM++", "gradient", "GradCAMPlusPlus"),
        CamMethod("xgradcam", "XGrad-CAM", "gradient", "XGradCAM"),
        CamMethod("layercam", "LayerCAM", "gradient", "LayerCAM"),
        CamMethod("hirescam", "HiResCAM", "gradient", "HiResCAM"),
        CamMethod("eigengradcam", "Eigen-Grad-CAM", "gradient", "EigenGradCAM"),
        CamMethod("eigencam", "EigenCAM", "activation", "EigenCAM"),
        CamMethod("scorecam", "Score-CAM", "perturbation", "ScoreCAM"),
    )
}
