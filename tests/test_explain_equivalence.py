"""attnviz's explain path gives default pytorch-grad-cam's maps, and leaves each model exactly as it found it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, randomise
from model_state import tensors_kept_on

from attnviz.attention import family
from attnviz.errors import AttnvizError
from attnviz.explainer import CAM_METHODS, ExplainSettings, ModelExplainer
from attnviz.models import VARIANTS, ModelSpec, build_model
from attnviz.pgc_adapter import cam_class

# the methods on the one pass; those that run pytorch-grad-cam's own call are compared further down
GRADIENT_METHODS = [key for key, method in CAM_METHODS.items() if method.kind == "gradient" and not method.own_call]
OWN_CALL_METHODS = [key for key, method in CAM_METHODS.items() if method.own_call]
ACTIVATION_METHODS = [key for key, method in CAM_METHODS.items() if method.kind == "activation"]
BASELINE_METHODS = [key for key, method in CAM_METHODS.items() if method.kind == "baseline"]
COMPARED_METHODS = GRADIENT_METHODS + ACTIVATION_METHODS + BASELINE_METHODS
LAYERS = ("layer4", "layer2")
TOLERANCE = 1e-4
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks")


def _grid() -> list:
    """Every method x variant x layer; Grad-CAM at layer4 stays in the quick run, the rest is marked slow."""
    cases = []
    for method in COMPARED_METHODS:
        for variant in VARIANTS:
            for layer in LAYERS:
                marks = () if (method, layer) == ("gradcam", "layer4") else (pytest.mark.slow,)
                cases.append(pytest.param(method, variant, layer, marks=marks, id=f"{method}-{variant}-{layer}"))
    return cases


@pytest.fixture(scope="module")
def user_models(tiny_explainer) -> dict[str, torch.nn.Module]:
    """A copy of each random model as a user holds it (parameters requiring grad): default pytorch-grad-cam's input."""
    models = {}
    for variant, explainer in tiny_explainer.explainers.items():
        model = copy.deepcopy(explainer.model).eval()
        for p in model.parameters():
            p.requires_grad_(True)
        models[variant] = model
    return models


@pytest.fixture(scope="module")
def image_tensor() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def default_pgc_map(model: torch.nn.Module, method: str, layer: str, x: torch.Tensor, target: int | None) -> np.ndarray:
    """pytorch-grad-cam used the default way: full backward pass, parameter gradients included."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = None if target is None else [ClassifierOutputTarget(target)]
    with cam_class(method)(model, target_layers=[model.get_submodule(layer)]) as cam:
        heatmap = cam(x, targets=targets)[0]
    model.zero_grad(set_to_none=True)
    return heatmap


@pytest.fixture
def numpy_global_state():
    """Tests that seed numpy's global generator (RandomCAM draws from it) leave it as they found it."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


@pytest.mark.usefixtures("numpy_global_state")
@pytest.mark.parametrize(("method", "variant", "layer"), _grid())
def test_heatmap_equals_default_pytorch_grad_cam(tiny_explainer, user_models, image_tensor, method, variant, layer):
    explainer = tiny_explainer.explainers[variant]
    if method == "fem":  # FEM keeps positions above mean + 2 std: a 2 x 2 layer4 (64 px) has none, 5 x 5 has some
        image_tensor = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    ranges = []
    for target in range(len(tiny_explainer.classes)):  # every class: some random-model maps are flat (all ReLU'd)
        np.random.seed(target)  # RandomCAM draws its weights from numpy's global generator: the same on both sides
        expected = default_pgc_map(user_models[variant], method, layer, image_tensor, target)
        np.random.seed(target)
        result = explainer.explain(image_tensor, ExplainSettings(method=method, layer=layer, target=target))
        assert result.heatmap.shape == expected.shape
        assert np.abs(result.heatmap - expected).max() <= TOLERANCE, f"class {target}"
        ranges.append(expected.max() - expected.min())
    assert max(ranges) > 0.5, "every reference map is flat: the comparison would prove nothing"


@pytest.mark.parametrize("size", [(64, 96), (96, 64)], ids=["taller", "wider"])
def test_grad_cam_written_out_equals_the_class_on_a_batch_of_non_square_images(user_models, size):
    """attnviz computes Grad-CAM itself (the app's default need not import pytorch-grad-cam): the maps of a batch
    of two non-square images, each with its own class, equal GradCAM's, with width and height the right way."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from attnviz.capture import Capture
    from attnviz.pgc_adapter import grad_cam

    model = user_models["cbam"]
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(11))
    ranges = []
    for first in range(len(TINY_CLASSES)):  # some maps of a random model are flat (all ReLU'd): try every class
        targets = [first, (first + 1) % len(TINY_CLASSES)]
        with Capture(model, ["layer4"], needs_grad=True, records=False) as capture:
            logits = capture.run(x)
            gradient = capture.gradients(logits, targets)["layer4"]
            ours = grad_cam(capture.activations["layer4"], gradient, (size[1], size[0]))
        with cam_class("gradcam")(model, target_layers=[model.layer4]) as cam:
            theirs = cam(x, targets=[ClassifierOutputTarget(t) for t in targets])
        model.zero_grad(set_to_none=True)
        assert ours.shape == theirs.shape == (2, *size)
        assert np.abs(ours - theirs).max() <= TOLERANCE, f"classes {targets}"
        ranges.append([m.max() - m.min() for m in theirs])
    assert np.max(ranges, axis=0).min() > 0.5, "every reference map of an image is flat: that would prove nothing"


def _block_targets() -> list:
    """A block, a module inside a block, a shortcut and an attention module as targets, for every family."""
    cases = []
    for variant in VARIANTS:
        layers = ["layer3.5", "layer4.2.conv3", "layer4.0.downsample", "layer2.1.bn3"]
        layers += ["layer4.1.attention"] if family(variant).has_attention else []
        cases += [pytest.param(variant, layer, marks=() if layer == "layer3.5" else (pytest.mark.slow,),
                               id=f"{variant}-{layer}") for layer in layers]
    return cases


@pytest.mark.parametrize(("variant", "layer"), _block_targets())
def test_any_block_as_the_target_equals_default_pytorch_grad_cam(tiny_explainer, user_models, image_tensor,
                                                                 variant, layer):
    explainer = tiny_explainer.explainers[variant]
    ranges = []
    for target in range(len(tiny_explainer.classes)):
        expected = default_pgc_map(user_models[variant], "gradcam", layer, image_tensor, target)
        result = explainer.explain(image_tensor, ExplainSettings(layer=layer, target=target))
        assert np.abs(result.heatmap - expected).max() <= TOLERANCE, f"class {target}"
        ranges.append(expected.max() - expected.min())
    assert max(ranges) > 0.5, "every reference map is flat: the comparison would prove nothing"


@pytest.mark.parametrize("variant", VARIANTS)
def test_own_top1_heatmap_equals_default_pytorch_grad_cam(tiny_explainer, user_models, image_tensor, variant):
    expected = default_pgc_map(user_models[variant], "gradcam", "layer4", image_tensor, target=None)
    result = tiny_explainer.explainers[variant].explain(image_tensor, ExplainSettings())
    with torch.no_grad():
        own_top1 = int(user_models[variant](image_tensor)[0].argmax())
    assert result.target.index == own_top1
    assert np.abs(result.heatmap - expected).max() <= TOLERANCE


# --------------------------------------------------------------------------- the model is left as it was found


def snapshot(model: torch.nn.Module) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


def leftovers(model: torch.nn.Module, requires_grad_before: list[bool]) -> list[str]:
    """Everything a request may have left on the model: hooks, gradients, training mode, changed flags, records."""
    problems = []
    for name, module in model.named_modules():
        for attribute in HOOK_DICTS:
            if getattr(module, attribute, None):
                problems.append(f"{name or 'model'}.{attribute} not empty")
        if module.training:
            problems.append(f"{name or 'model'} in training mode")
    problems += [f"{kept} kept" for kept in tensors_kept_on(model)]
    problems += [f"global {attribute} not empty" for attribute in GLOBAL_HOOKS
                 if getattr(torch.nn.modules.module, attribute)]
    problems += [f"{name}.grad kept" for name, p in model.named_parameters() if p.grad is not None]
    if snapshot(model) != requires_grad_before:
        problems.append("requires_grad changed")
    return problems


@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_explain_leaves_every_model_as_found(tiny_explainer, scene_image, method):
    before = {v: snapshot(e.model) for v, e in tiny_explainer.explainers.items()}
    tiny_explainer.explain(scene_image, method=method, layer="layer3", top_k=3)
    for variant, explainer in tiny_explainer.explainers.items():
        assert leftovers(explainer.model, before[variant]) == []


def test_refused_request_leaves_every_model_as_found(tiny_explainer, scene_image):
    before = {v: snapshot(e.model) for v, e in tiny_explainer.explainers.items()}
    with pytest.raises(AttnvizError, match="target class 99"):
        tiny_explainer.explain(scene_image, target=99, top_k=3)
    for variant, explainer in tiny_explainer.explainers.items():
        assert leftovers(explainer.model, before[variant]) == []


def test_failure_inside_the_pass_leaves_the_model_as_found(tiny_explainer, image_tensor, monkeypatch):
    explainer = tiny_explainer.explainers["cbam"]
    before = snapshot(explainer.model)

    def failing_grad(*args, **kwargs):
        raise RuntimeError("backward failed")

    monkeypatch.setattr(torch.autograd, "grad", failing_grad)  # after the forward pass and the CAM's own hooks
    with pytest.raises(RuntimeError, match="backward failed"):
        explainer.explain(image_tensor, ExplainSettings(layer="layer2"))
    assert leftovers(explainer.model, before) == []


@pytest.mark.slow
@pytest.mark.usefixtures("numpy_global_state")
@pytest.mark.parametrize("method", ["gradcam", "kpcacam", "randomcam"])
def test_augmentation_smoothing_equals_pytorch_grad_cams_own_call(tiny_explainer, user_models, image_tensor, method):
    """With aug_smooth every kind but perturbation goes through pytorch-grad-cam's own call (its own passes)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = user_models["cbam"]
    np.random.seed(5)
    with cam_class(method)(model, target_layers=[model.get_submodule("layer4")]) as cam:
        expected = cam(image_tensor, targets=[ClassifierOutputTarget(1)], aug_smooth=True)[0]
    model.zero_grad(set_to_none=True)
    np.random.seed(5)
    result = tiny_explainer.explainers["cbam"].explain(image_tensor, ExplainSettings(method=method, target=1,
                                                                                     aug_smooth=True))
    assert expected.max() - expected.min() > 0.05  # an average of six maps: not flat, though less spread
    assert np.abs(result.heatmap - expected).max() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize(("method", "batch"), [("ablationcam", 128), ("scorecam", 100)])
# two attention designs, not all four: 2 x 1024 passes a case (30-40 s on two AVX2 cores); CBAM has a channel
# and a spatial gate, ECA a channel gate of another kind; the wrapper around the passes is the same for every model
@pytest.mark.parametrize("variant", ["cbam", "eca"])
def test_perturbation_method_equals_pytorch_grad_cams_own_call(tiny_explainer, user_models, image_tensor, variant,
                                                                 method, batch):
    """Ablation-CAM (one pass per batch of zeroed channels) and Score-CAM (attnviz's own loop over batches of masked
    copies, not all of them at once) run their passes through the progress and deadline wrapper; the map is still
    the library's, and the progress counts every pass, set-up passes included."""
    for target in range(len(tiny_explainer.classes)):  # the first class whose map is not flat (random models)
        expected = default_pgc_map(user_models[variant], method, "layer3", image_tensor, target)
        if expected.max() - expected.min() > 0.5:
            break
    else:
        pytest.fail("every reference map is flat: the comparison would prove nothing")
    reports = []
    result = tiny_explainer.explainers[variant].explain(
        image_tensor, ExplainSettings(method=method, layer="layer3", target=target, score_cam_batch=batch),
        progress=lambda share, text: reports.append(share))
    assert np.abs(result.heatmap - expected).max() <= TOLERANCE
    assert reports[-1] == pytest.approx(1.0) and len(reports) == CAM_METHODS[method].setup_passes + -(-1024 // batch)


def test_score_cam_weights_are_pytorch_grad_cams_for_any_batch_size(tiny_explainer, image_tensor):
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from attnviz.pgc_adapter import score_cam_weights

    model = tiny_explainer.explainers["cbam"].model
    x = torch.cat([image_tensor, image_tensor.flip(-1)])
    activations = torch.randn(2, 40, 4, 4, generator=torch.Generator().manual_seed(5)).relu().numpy()
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    cam = ScoreCAM(model, target_layers=[model.layer4])
    try:
        cam.batch_size = 16
        expected = cam.get_cam_weights(x, None, targets, activations, None)
    finally:
        cam.activations_and_grads.release()
    assert not np.allclose(expected, expected.mean())  # the channels are told apart
    for batch_size in (1, 7, 40, 64):
        np.testing.assert_allclose(score_cam_weights(model, x, targets, activations, batch_size), expected,
                                   rtol=1e-5, atol=1e-7)


def test_ablation_cam_stopped_by_the_time_limit_leaves_the_model_whole(tiny_explainer, image_tensor):
    """Its passes swap the target layer for an ablation layer; a stop half-way must put the layer back."""
    explainer = tiny_explainer.explainers["se"]
    before = snapshot(explainer.model)
    layer = explainer.layer("layer4")
    calls = []

    def stop_after_two(share, text):
        calls.append(share)
        if len(calls) == 2:
            raise AttnvizError("stopped")

    with pytest.raises(AttnvizError, match="stopped"):
        explainer.explain(image_tensor, ExplainSettings(method="ablationcam", target=0), progress=stop_after_two)
    assert explainer.layer("layer4") is layer
    assert leftovers(explainer.model, before) == []
    again = explainer.explain(image_tensor, ExplainSettings(target=0))  # and it still explains
    assert again.heatmap.shape == (64, 64)


# --------------------------------------------------------------------------- methods on pytorch-grad-cam's own call
# They run their own passes (FullGrad hooks every bias layer, ShapleyCAM backpropagates twice), so they are
# compared on shallow networks of every family: one bottleneck per stage, the same modules and channel counts.

REFINE_LAYERS = {"layer2": ("layer2", "layer3", "layer4")}  # RefineCAM at layer2 multiplies with every later stage


@pytest.fixture(scope="module")
def shallow() -> dict[str, tuple[ModelExplainer, torch.nn.Module]]:
    """Per family: an explainer of a random one-block-per-stage network, and a copy as a user holds it."""
    found = {}
    for i, variant in enumerate(VARIANTS):
        with torch.random.fork_rng():
            torch.manual_seed(i)
            model = randomise(build_model(ModelSpec(variant, len(TINY_CLASSES), layers=(1, 1, 1, 1))), seed=i).eval()
        user = copy.deepcopy(model)
        for p in user.parameters():
            p.requires_grad_(True)
        found[variant] = (ModelExplainer(variant, model, TINY_CLASSES), user)
    return found


def own_reference(model: torch.nn.Module, method: str, layer: str, x: torch.Tensor, target: int) -> np.ndarray:
    """pytorch-grad-cam's own call of each such method, as its README and sources use it."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets, module = [ClassifierOutputTarget(target)], model.get_submodule(layer)
    if method == "finercam":  # the target index, compared with the classes whose logits are nearest
        with pgc.FinerCAM(model, [module]) as cam:
            heatmap = cam(x, None, target_idx=target)[0]
    elif method == "refinecam":
        cam = pgc.RefineCAM(model, [model.get_submodule(name) for name in REFINE_LAYERS[layer]])
        heatmap = cam(x, targets)[0]
        for base in cam.base_cam_per_layer:
            base.activations_and_grads.release()
    elif method == "fullgrad":
        with pgc.FullGrad(model, []) as cam:
            heatmap = cam(x, targets)[0]
    elif method == "shapleycam":
        with pgc.ShapleyCAM(model, [module]) as cam:
            heatmap = cam(x, targets)[0]
    else:  # Guided Grad-CAM: the README's cam_mask * gb, then |.|, the maximum over colour channels, min-max
        with pgc.GradCAM(model, [module]) as cam:
            grayscale = cam(x, targets)[0]
        guided = pgc.GuidedBackpropReLUModel(copy.deepcopy(model))(x.clone(), target)  # it swaps the ReLUs
        pixels = np.abs(np.stack([grayscale] * 3, axis=-1) * guided).max(axis=-1)
        heatmap = (pixels - pixels.min()) / (pixels.max() - pixels.min() + 1e-7)
    model.zero_grad(set_to_none=True)
    return heatmap


def _own_call_grid() -> list:
    """Each method at layer2 for every family, and ShapleyCAM at layer4 too (before the linear head its gradient
    does not depend on the activations: the second derivative is there but zero)."""
    cases = [(method, variant, "layer2") for method in OWN_CALL_METHODS for variant in VARIANTS]
    cases += [("shapleycam", variant, "layer4") for variant in VARIANTS]
    return [pytest.param(*case, marks=() if case[:2] == ("guidedgradcam", "cbam") else (pytest.mark.slow,),
                         id="-".join(case)) for case in cases]


@pytest.mark.parametrize(("method", "variant", "layer"), _own_call_grid())
def test_own_call_method_equals_pytorch_grad_cams_own_call(shallow, image_tensor, method, variant, layer):
    explainer, user = shallow[variant]
    ranges = []
    for target in range(len(TINY_CLASSES)):
        expected = own_reference(user, method, layer, image_tensor, target)
        result = explainer.explain(image_tensor, ExplainSettings(method=method, layer=layer, target=target))
        assert result.heatmap.shape == expected.shape == tuple(image_tensor.shape[-2:])
        assert np.abs(result.heatmap - expected).max() <= TOLERANCE, f"class {target}"
        ranges.append(expected.max() - expected.min())
    assert max(ranges) > 0.5, "every reference map is flat: the comparison would prove nothing"


def module_objects(model: torch.nn.Module) -> list[tuple[str, int]]:
    """Every module by name and identity: a module swapped for another, even an equal one, shows."""
    return [(name, id(module)) for name, module in model.named_modules()]


@pytest.mark.parametrize("method", OWN_CALL_METHODS)
def test_own_call_method_leaves_the_model_as_found(shallow, image_tensor, method):
    explainer = shallow["cbam"][0]
    before, modules = snapshot(explainer.model), module_objects(explainer.model)
    explainer.explain(image_tensor, ExplainSettings(method=method, layer="layer2", target=1))
    assert leftovers(explainer.model, before) == []
    assert module_objects(explainer.model) == modules


def test_guided_backprop_stopped_half_way_puts_the_models_relus_back(shallow, image_tensor, monkeypatch):
    """GuidedBackpropReLUModel swaps every ReLU for its own and back only when its pass ends (and then for new
    ReLUs, not the model's): a failure in its backward must still leave the model's own modules."""
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLU

    explainer = shallow["cbam"][0]
    before, modules = snapshot(explainer.model), module_objects(explainer.model)

    def failing_backward(ctx, grad_output):
        raise RuntimeError("guided backward failed")

    monkeypatch.setattr(GuidedBackpropReLU, "backward", staticmethod(failing_backward))
    with pytest.raises(RuntimeError, match="guided backward failed"):
        explainer.explain(image_tensor, ExplainSettings(method="guidedgradcam", layer="layer2", target=0))
    assert module_objects(explainer.model) == modules
    assert leftovers(explainer.model, before) == []


@pytest.mark.slow
def test_a_batch_runs_own_call_methods_image_by_image(shallow, image_tensor):
    """The analysis' batch path: each image of the batch gets its own call with its own target class."""
    explainer = shallow["se"][0]
    x = torch.cat([image_tensor, image_tensor.flip(-1)])
    maps = explainer.explain_batch(x, [0, 2], [("finercam", "layer2")]).maps[("finercam", "layer2")]
    for i, target in enumerate([0, 2]):
        single = explainer.explain(x[i : i + 1], ExplainSettings(method="finercam", layer="layer2", target=target))
        assert np.abs(maps[i] - single.heatmap).max() <= TOLERANCE
