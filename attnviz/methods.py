"""The CAM method table: one row per method, the key users pass, its label, its kind, its pytorch-grad-cam class
and a one-line description.

Kinds: "gradient" methods need the target layer's activations and the target logit's gradient there;
"activation" methods need the activations only (they are class-agnostic unless said otherwise);
"perturbation" methods run passes of their own on altered copies of the image (and so take time, with progress
and a time limit); a "baseline" is no explanation at all but what one is compared with (RandomCAM: random channel
weights on the real activations).

Most methods run on attnviz's one pass (the target layer's activations and the target logit's gradient there,
handed to pytorch-grad-cam's class). A method with ``own_call`` needs more than that pass gives (second-order
gradients, every bias's gradient, another target scalar, several layers, modified ReLUs), so it runs
pytorch-grad-cam's own call, with passes of its own; ``own_call`` says why.
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
    own_call: str = ""  # why it runs pytorch-grad-cam's own call instead of the one pass ("": it does not)
    smoothing: tuple[str, ...] = ("aug_smooth", "eigen_smooth")  # the options pytorch-grad-cam's call takes

    @property
    def pass_gradient(self) -> bool:
        """Whether the image's own pass backpropagates the target logit to the target layer for this method."""
        return self.kind == "gradient" and not self.own_call

    def refusal(self, aug_smooth: bool, eigen_smooth: bool) -> str | None:
        """One line when a smoothing option is asked for that pytorch-grad-cam's call of this method lacks."""
        asked = [name for name, on in (("aug_smooth", aug_smooth), ("eigen_smooth", eigen_smooth)) if on]
        missing = [name for name in asked if name not in self.smoothing]
        if not missing:
            return None
        return f"{self.label} takes no {' or '.join(missing)} in pytorch-grad-cam's {self.library_class}; switch it off"

    @property
    def choice_label(self) -> str:
        """How a method list shows it: the label, its kind, and "slow" for perturbation (a pass per channel batch)."""
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
        CamMethod("finercam", "FinerCAM", "gradient", "FinerCAM",
                  "Grad-CAM of the target logit minus its 3 nearest classes' logits (probability-weighted)",
                  own_call="its target is not the logit but the logit minus the nearest classes' logits",
                  smoothing=("eigen_smooth",)),
        CamMethod("shapleycam", "ShapleyCAM", "gradient", "ShapleyCAM",
                  "channels weighted by the mean of the gradient minus half the Hessian times the activations",
                  own_call="second-order gradients: a Hessian-vector product through the network's graph"),
        CamMethod("refinecam", "RefineCAM", "gradient", "RefineCAM",
                  "Grad-CAM++ at the target layer times Grad-CAM++ at every later stage (sharper early layers)",
                  own_call="Grad-CAM++ at several layers, one full pass each",
                  smoothing=()),  # its call has no aug_smooth and hands eigen_smooth to Grad-CAM++ as aug_smooth
        CamMethod("fullgrad", "FullGrad", "gradient", "FullGrad",
                  "|input gradient x input| plus |bias x bias gradient| of every layer; ignores the target layer",
                  own_call="gradients of every bias in the network and of the input"),
        CamMethod("guidedgradcam", "Guided Grad-CAM", "gradient", "GuidedBackpropReLUModel",
                  "|guided backprop x Grad-CAM|, max over colour channels, min-max scaled: pixel-level",
                  own_call="guided backpropagation replaces every ReLU's backward"),
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
