"""The explain call: plain data out, attention from the image's own pass, nothing kept between requests."""

import json

import numpy as np
import pytest
import torch
from model_state import tensors_kept_on
from PIL import Image

from attnviz.capture import model_gates
from attnviz.errors import AttnvizError
from attnviz.explainer import ExplainSettings, top_region_iou, top_region_mask
from attnviz.images import preprocess
from attnviz.models import VARIANTS


def test_explain_returns_top_k_heatmaps_and_attention_for_every_model(tiny_explainer, scene_image):
    result = tiny_explainer.explain(scene_image, top_k=3)
    assert list(result.results) == list(VARIANTS)
    assert result.view.shape == (64, 64, 3)
    for model in result.results.values():
        probabilities = [p.probability for p in model.top]
        assert len(model.top) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert abs(model.probabilities.sum() - 1) < 1e-5
        assert model.target.index == model.top[0].index  # default: the model's own top-1
        assert model.heatmap.shape == (64, 64) and model.heatmap.dtype == np.float32
        assert 0 <= model.heatmap.min() and model.heatmap.max() <= 1 + 1e-6
        assert model.seconds > 0


def test_attention_has_one_record_per_block_with_the_stage_widths(tiny_explainer, scene_image):
    result = tiny_explainer.explain(scene_image)
    assert result.results["resnet50"].attention == []
    widths = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    for variant in ("se", "cbam", "eca"):
        records = result.results[variant].attention
        assert len(records) == 16 and {r.family for r in records} == {variant}
        for record in records:
            assert record.channel_weights.shape == (widths[record.stage],)
            assert ((record.channel_weights > 0) & (record.channel_weights < 1)).all()
            assert (record.spatial_map is not None) == (variant == "cbam")
    spatial = {r.block: r.spatial_map.shape for r in result.results["cbam"].attention}
    assert spatial["layer1.0"] == (16, 16) and spatial["layer4.2"] == (2, 2)


def test_chosen_target_class_is_explained_by_every_model(tiny_explainer, scene_image):
    result = tiny_explainer.explain(scene_image, target=2)
    assert {m.target.index for m in result.results.values()} == {2}
    assert {m.target.name for m in result.results.values()} == {tiny_explainer.classes[2]}


def test_selected_models_only_are_run(tiny_explainer, scene_image):
    result = tiny_explainer.explain(scene_image, variants=("cbam",))
    assert list(result.results) == ["cbam"] and result.agreement == {}


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"method": "magic"}, "unknown CAM method"),
        ({"layer": "layer9"}, "unknown target layer"),
        ({"target": 99}, "outside"),
        ({"top_k": 0}, "top-k"),
        ({"variants": ("vit",)}, "no model"),
    ],
)
def test_invalid_settings_are_one_clear_error(tiny_explainer, scene_image, overrides, words):
    with pytest.raises(AttnvizError, match=words):
        tiny_explainer.explain(scene_image, **overrides)


def _direct_attention(explainer, image) -> dict:
    """Channel weights of the CBAM model from a plain forward pass on the preprocessed image, read by hooks of
    the test's own on the channel gates."""
    model = explainer.explainers["cbam"].model
    prepared = preprocess(Image.fromarray(image), explainer.model_set.preprocessing)
    records, handles = {}, []
    for gate in model_gates(model):
        if gate.spec.name == "channel":
            handles.append(gate.module.register_forward_hook(
                lambda m, i, o, block=gate.block: records.__setitem__(block, o[0].numpy().copy())))
    try:
        with torch.no_grad():
            model(prepared.tensor)
    finally:
        for handle in handles:
            handle.remove()
    return records


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {"method": "scorecam", "layer": "layer1", "score_cam_batch": 64},
        {"method": "gradcam", "aug_smooth": True},
    ],
)
def test_attention_shown_comes_from_the_pass_on_the_image_itself(tiny_explainer, scene_image, settings):
    expected = _direct_attention(tiny_explainer, scene_image)
    result = tiny_explainer.explain(scene_image, variants=("cbam",), **settings)
    for record in result.results["cbam"].attention:
        np.testing.assert_allclose(record.channel_weights, expected[record.block], rtol=1e-5, atol=1e-6)


def test_no_request_leaves_data_or_hooks_on_the_network(tiny_explainer, scene_image):
    tiny_explainer.explain(scene_image)
    for explainer in tiny_explainer.explainers.values():
        assert tensors_kept_on(explainer.model) == []
        assert all(not m._forward_hooks and not m._backward_hooks for m in explainer.model.modules())


def test_a_second_image_gets_its_own_maps_not_the_first_ones(tiny_explainer, scene_image):
    first = tiny_explainer.explain(scene_image, layer="layer2")
    second = tiny_explainer.explain(np.ascontiguousarray(scene_image[::-1, ::-1]), layer="layer2")
    again = tiny_explainer.explain(scene_image, layer="layer2")
    for variant in first.results:
        assert first.results[variant].heatmap.max() > 0.5  # a real map, not an all-zero one
        assert not np.allclose(first.results[variant].heatmap, second.results[variant].heatmap)
        np.testing.assert_allclose(first.results[variant].heatmap, again.results[variant].heatmap, atol=1e-6)
    a = first.results["cbam"].attention[0].spatial_map
    b = second.results["cbam"].attention[0].spatial_map
    assert not np.allclose(a, b)


def test_summary_is_json_with_predictions_settings_and_agreement(tiny_explainer, scene_image):
    summary = tiny_explainer.explain(scene_image).summary()
    text = json.dumps(summary)
    assert set(json.loads(text)["models"]) == set(VARIANTS)
    assert set(summary["agreement_top20_iou"]) == {f"{a}|{b}" for i, a in enumerate(VARIANTS) for b in VARIANTS[i + 1:]}
    assert summary["settings"]["method"] == ExplainSettings().method


def test_top_region_iou_is_one_for_equal_maps_and_zero_for_disjoint_ones():
    ramp = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert top_region_iou(ramp, ramp) == 1.0
    assert top_region_iou(ramp, -ramp) == 0.0
    shifted = np.roll(ramp, 10)  # top 20 rows-worth overlap by half
    assert 0 < top_region_iou(ramp, shifted) < 1


@pytest.mark.parametrize("levels", [None, 2, 5, 50])  # None: no ties; few levels: many ties at the cut
def test_top_region_mask_takes_the_pixels_a_stable_sort_puts_last(levels):
    rng = np.random.default_rng(levels or 0)
    for shape in [(7, 9), (56, 56), (224, 224)]:
        values = rng.random(shape, np.float32)
        if levels:
            values = np.floor(values * levels) / levels
        for fraction in (0.01, 0.2, 0.5):
            k = max(1, round(fraction * values.size))
            expected = np.zeros(values.size, bool)
            expected[np.argsort(values, axis=None, kind="stable")[-k:]] = True
            np.testing.assert_array_equal(top_region_mask(values, fraction), expected.reshape(shape))


def test_bf16_gives_float32_results_close_to_fp32(tiny_explainer, scene_image):
    fp32 = tiny_explainer.explain(scene_image, top_k=4)
    bf16 = tiny_explainer.explain(scene_image, top_k=4, precision="bf16",
                                  target=fp32.results["se"].target.index)
    for variant in VARIANTS:
        a, b = fp32.results[variant], bf16.results[variant]
        assert b.heatmap.dtype == np.float32 and b.heatmap.shape == a.heatmap.shape
        assert np.abs(a.probabilities - b.probabilities).max() < 0.05
        if variant == "se":  # the same class explained: the maps agree, though not bit for bit
            assert np.corrcoef(a.heatmap.ravel(), b.heatmap.ravel())[0, 1] > 0.9
        for x, y in zip(a.attention, b.attention, strict=True):
            assert y.channel_weights.dtype == np.float32
            assert np.abs(x.channel_weights - y.channel_weights).max() < 0.05
    assert bf16.settings.precision == "bf16"
    # bf16 really ran: the probabilities are not bit for bit those of fp32
    assert any(not np.array_equal(fp32.results[v].probabilities, bf16.results[v].probabilities)
               for v in VARIANTS)


def test_grid_of_methods_layers_and_classes_equals_single_explanations_from_one_forward(tiny_explainer, scene_image):
    model = tiny_explainer.explainers["cbam"].model
    forwards = []
    handle = model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        view, grid = tiny_explainer.explain_grid(scene_image, methods=["gradcam", "layercam", "eigencam"],
                                                 layers=["layer4", "layer2"], targets=["square", 3],
                                                 variants=["cbam"])
    finally:
        handle.remove()
    assert forwards == [1] and list(grid) == ["cbam"]
    result = grid["cbam"]
    assert len(result.maps) == 3 * 2 * 2 and len(result.attention) == 16
    for (method, layer, target), heatmap in result.maps.items():
        single = tiny_explainer.explain(scene_image, method=method, layer=layer, target=target, variants=("cbam",))
        np.testing.assert_allclose(heatmap, single.results["cbam"].heatmap, atol=1e-5)
        np.testing.assert_allclose(result.probabilities, single.results["cbam"].probabilities, atol=1e-6)
    assert not np.allclose(result.maps[("gradcam", "layer4", 1)], result.maps[("gradcam", "layer4", 3)])
    assert tensors_kept_on(model) == []  # the records stayed in the capture, not on the network


def test_grid_refuses_score_cam_and_unknown_classes(tiny_explainer, scene_image):
    with pytest.raises(AttnvizError, match="Score-CAM needs passes of its own"):
        tiny_explainer.explain_grid(scene_image, methods=["scorecam"], variants=["resnet50"])
    with pytest.raises(AttnvizError, match="'unicorn' is not a class of this set"):
        tiny_explainer.explain_grid(scene_image, targets=["unicorn"], variants=["resnet50"])


@pytest.mark.slow
def test_aug_smooth_is_pytorch_grad_cams_own_call_and_leaves_no_hooks(tiny_explainer, scene_image):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    result = tiny_explainer.explain(scene_image, variants=("se",), aug_smooth=True, target=2)
    model = tiny_explainer.explainers["se"].model
    x = preprocess(Image.fromarray(scene_image), tiny_explainer.model_set.preprocessing).tensor
    with GradCAM(model, target_layers=[model.layer4]) as cam:
        expected = cam(x.clone().requires_grad_(True), [ClassifierOutputTarget(2)], aug_smooth=True)[0]
    np.testing.assert_allclose(result.results["se"].heatmap, expected, atol=1e-5)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("layer, words", [
    ("layer4.2.bn1", "unknown target layer 'layer4.2.bn1'; choose a stage"),
    ("fc", "unknown target layer 'fc'"),
    ("layer4.3", "unknown target layer"),
])
def test_an_invalid_target_layer_is_one_line_listing_the_valid_ones(tiny_explainer, scene_image, layer, words):
    with pytest.raises(AttnvizError, match=words) as caught:
        tiny_explainer.explain(scene_image, layer=layer)
    assert "\n" not in str(caught.value) and "layer3.0-layer3.5" in str(caught.value)


def test_an_attention_module_is_a_target_only_in_models_that_have_one(tiny_explainer, scene_image):
    result = tiny_explainer.explain(scene_image, layer="layer4.1.attention", variants=("se", "cbam", "eca"))
    assert all(r.heatmap.shape == (64, 64) for r in result.results.values())
    with pytest.raises(AttnvizError, match="ResNet50 has no target layer 'layer4.1.attention'"):
        tiny_explainer.explain(scene_image, layer="layer4.1.attention")


# ----------------------------------------------------------------------------- batches


def _photos(count: int) -> list[np.ndarray]:
    """Images of different sizes and content, seeded here: each is resized and cropped on its own."""
    rng = np.random.default_rng(11)
    images = []
    for i in range(count):
        image = rng.integers(0, 256, (72 + 12 * i, 96, 3), dtype=np.uint8)
        image[20 : 40 + 4 * i, 30:60] = (200, 40 * i, 30)  # something other than noise to look at
        images.append(image)
    return images


def _assert_same(together, alone) -> None:
    """The same answer within float rounding: a batch runs other convolution kernels than one image (on AVX2
    cores probabilities moved by up to 1.2e-5), so probabilities and records are compared within 5e-5."""
    np.testing.assert_array_equal(together.view, alone.view)
    assert list(together.results) == list(alone.results)
    for variant, a in alone.results.items():
        b = together.results[variant]
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=5e-5)
        assert np.abs(b.heatmap - a.heatmap).max() <= 1e-4, variant
        assert [p.index for p in b.top] == [p.index for p in a.top] and b.target.index == a.target.index
        assert [x.block for x in b.attention] == [x.block for x in a.attention]
        for x, y in zip(b.attention, a.attention, strict=True):
            for name, values in y.records.items():
                np.testing.assert_allclose(x.records[name], values, atol=5e-5)
        if a.knockout is not None:
            assert np.abs(b.knockout.heatmap - a.knockout.heatmap).max() <= 1e-4
            assert b.knockout.target_change == pytest.approx(a.knockout.target_change, abs=5e-5)
    assert together.agreement.keys() == alone.agreement.keys()


@pytest.mark.parametrize(
    "settings",
    [{"method": "gradcam"}, {"method": "eigencam", "layer": "layer3"}, {"method": "layercam", "target": 2},
     {"knockout": "layer4.*", "knockout_value": "identity"}],
    ids=["gradcam", "eigencam-layer3", "layercam-target", "knockout"],
)
def test_a_batch_gives_each_image_what_it_gets_alone(tiny_explainer, settings):
    images = _photos(5)
    together = tiny_explainer.explain_many(images, batch_size=3, **settings)  # batches of 3 and 2
    assert len(together) == len(images)
    for image, explanation in zip(images, together, strict=True):
        _assert_same(explanation, tiny_explainer.explain(image, **settings))
    # the images are not all alike: a batch that repeated one image's result would fail above or here
    assert len({e.results["resnet50"].probabilities.argmax() for e in together} |
               {float(e.results["resnet50"].probabilities.max()) for e in together}) > 2


def test_a_bad_image_in_a_batch_is_one_line_before_any_model_runs(tiny_explainer, monkeypatch):
    ran = []
    monkeypatch.setattr(type(tiny_explainer.explainers["se"]), "explain_images",
                        lambda *args, **kwargs: ran.append(1))
    with pytest.raises(AttnvizError, match="not an image file"):
        tiny_explainer.explain_many([_photos(1)[0], b"these are notes, not pixels"])
    with pytest.raises(AttnvizError, match="batch size must be at least 1"):
        tiny_explainer.explain_many(_photos(1), batch_size=0)
    assert ran == []
