"""The CAM method table: one row per method, the key users pass, its label, its kind, its pytorch-grad-cam class
and a one-line description.

Kinds: "gradient" methods need the target layer's activations and the target logit's gradient there;
"activation" methods need the activations only (they are class-agnostic unless said otherwise);
"perturbation" methods run passes of their own on altered copies of the image (and so take time, with progress
and a time limit); a "baseline" is no explanation at all but what one is compared with (RandomCAM: random channel
weights on the real activations).
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("gradient", "activation", "perturbation", "baseline")


@dataclass(frozen=True)
class CamMethod:
    key: str
    label: str
    kind: str  # one of KINDS
    library_class: str  # the class's name in pytorch_grad_cam
    description: str  # one line: what the map is
    setup_passes: int = 0  # perturbation methods: passes before the per-channel batches (progress counts them)

    @property
    def choice_label(self) -> str:
        """How a method list shows it: the label, its kind, and "slow" for the methods with passes of their own."""
        return f"{self.label} · {self.kind}" + (" (slow)" if self.kind == "perturbation" else "")


CAM_METHODS: dict[str, CamMethod] = {
    m.key: m
    for m in (
        CamMethod("gradcam", "Grad-CAM", "gradient", "GradCAM",
                  "channels weighted by the target logit's mean gradient"),
        CamMethod("gradcam++", "Grad-CAM++", "gradient", "GradCAMPlusPlus",
                  "channels weighted by positive gradients with second-order terms (several objects of a class)"),
        CamMethod("xgradcam", "XGrad-CAM", "gradient", "XGradCAM",
                  "channels weighted by their gradients averaged with the activations as weights"),
        CamMethod("layercam", "LayerCAM", "gradient", "LayerCAM",
                  "each position weighted by its own positive gradient (finer maps at early layers)"),
        CamMethod("hirescam", "HiResCAM", "gradient", "HiResCAM",
                  "gradient times activation, summed over channels without averaging the gradient"),
        CamMethod("gradcamelementwise", "Grad-CAM element-wise", "gradient", "GradCAMElementWise",
                  "gradient times activation, negative products clipped before the channel sum"),
        CamMethod("eigengradcam", "Eigen-Grad-CAM", "gradient", "EigenGradCAM",
                  "first principal component of gradient times activation"),
        CamMethod("eigencam", "EigenCAM", "activation", "EigenCAM",
                  "first principal component of the activations (the same map for every class)"),
        CamMethod("kpcacam", "KPCA-CAM", "activation", "KPCA_CAM",
                  "first kernel principal component (sigmoid kernel) of the activations (class-agnostic)"),
        CamMethod("fem", "FEM", "activation", "FEM",
                  "channels weighted by their share of positions above mean + 2 std (class-agnostic)"),
        CamMethod("scorecam", "Score-CAM", "perturbation", "ScoreCAM",
                  "channels weighted by the target's score on the image masked by each channel (one pass each)"),
        CamMethod("ablationcam", "Ablation-CAM", "perturbation", "AblationCAM",
                  "channels weighted by the target's relative drop when each channel is zeroed (one pass each)",
                  setup_passes=1),
        CamMethod("randomcam", "RandomCAM (baseline)", "baseline", "RandomCAM",
                  "random channel weights in [-1, 1] on the real activations: what a map scores by chance"),
    )
}


def method_choices() -> list[tuple[str, str]]:
    """(label, key) for a method list, grouped by kind in the order of KINDS."""
    return [(m.choice_label, m.key) for kind in KINDS for m in CAM_METHODS.values() if m.kind == kind]
