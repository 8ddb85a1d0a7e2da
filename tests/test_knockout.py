"""Switching attention gates off: the spec, what a switched-off gate does to the network, and the results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomise

from attnviz.capture import Capture, model_gates
from attnviz.errors import AttnvizError
from attnviz.knockout import check_spec, mean_gate_outputs, parse_knockout, replacements
from attnviz.models import build_resnet50
from attnviz.weights import write_safetensors


def seeded_model(variant: str, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return randomise(build_resnet50(variant, num_classes=4), seed=seed).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("spec, gates", [
    ("all", 32),
    ("all:spatial", 16),
    ("layer3", 12),
    ("layer4.*:channel", 3),
    ("layer3.2", 2),
    ("layer1.0:channel, layer4.2:spatial", 2),
])
def test_spec_names_the_gates_of_its_targets(spec, gates):
    chosen = parse_knockout(spec, model_gates(build_resnet50("cbam", num_classes=2)))
    assert len(chosen) == gates
    if spec == "layer3.2":
        assert [g.key for g in chosen] == ["layer3.2:channel", "layer3.2:spatial"]


@pytest.mark.parametrize("spec", ["layer5", "layer4.3", "layer2.x", "all:excite", "", "layer1,,layer2", "block3"])
def test_a_bad_spec_is_one_line_naming_the_valid_blocks_and_gates(spec):
    with pytest.raises(AttnvizError) as caught:
        check_spec(spec, {"channel", "spatial"})
    message = str(caught.value)
    assert "\n" not in message and "layer3.0-layer3.5" in message and "gates: channel, spatial" in message


def test_a_gate_another_model_has_leaves_this_one_unaffected():
    se_gates = model_gates(build_resnet50("se", num_classes=2))
    assert parse_knockout("all:spatial", se_gates, gate_names={"channel", "spatial"}) == []
    with pytest.raises(AttnvizError, match="not valid"):
        parse_knockout("all:spatial", se_gates)  # no model of this set has a spatial gate


# --------------------------------------------------------------------------- what it does to the network


def test_identity_on_every_se_gate_is_the_network_without_its_se_modules(image):
    se = seeded_model("se", seed=1)
    plain = build_resnet50("resnet50", num_classes=4).eval()
    plain.load_state_dict({k: v for k, v in se.state_dict().items() if ".attention." not in k})
    chosen = parse_knockout("all", model_gates(se))
    with Capture(se, replace=replacements(chosen, "identity")) as capture, torch.no_grad():
        knocked = capture.run(image)
    with torch.no_grad():
        expected = plain(image)
        trained = se(image)
    torch.testing.assert_close(knocked, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trained, expected, atol=1e-3)  # the gates did matter


def test_a_spatial_only_knockout_leaves_the_channel_records_as_they_were(image):
    cbam = seeded_model("cbam", seed=2)
    with Capture(cbam) as capture:
        capture.run(image)
        trained = capture.records(0)
    chosen = parse_knockout("layer4.2:spatial", model_gates(cbam))
    with Capture(cbam, replace=replacements(chosen, "identity")) as capture:
        capture.run(image)
        knocked = capture.records(0)
    for before, after in zip(trained, knocked, strict=True):
        np.testing.assert_array_equal(before.channel_weights, after.channel_weights)
        if before.block == "layer4.2":
            assert np.all(after.spatial_map == 1.0) and not np.all(before.spatial_map == 1.0)
        else:
            np.testing.assert_array_equal(before.spatial_map, after.spatial_map)


def test_the_mean_value_replaces_each_gate_by_its_stored_mean(image):
    se = seeded_model("se", seed=3)
    batches = [torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (6, 7)]
    means = mean_gate_outputs(se, batches)
    assert set(means) == {g.key for g in model_gates(se)} and means["layer4.2:channel"].shape == (2048,)
    with Capture(se) as capture:
        for x in batches:
            capture.run(x)
    chosen = parse_knockout("layer4.2", model_gates(se))
    with Capture(se, replace=replacements(chosen, "mean", means)) as capture:
        capture.run(image)
        record = capture.records(0)[-1]
    np.testing.assert_allclose(record.channel_weights, means["layer4.2:channel"].numpy(), rtol=1e-6)
    with pytest.raises(AttnvizError, match="no stored mean output for gate layer4.2:channel"):
        replacements(chosen, "mean", {})


# --------------------------------------------------------------------------- through explain


def test_explain_shows_each_model_as_trained_and_with_the_gates_off(tiny_explainer, scene_image):
    result = tiny_explainer.explain(scene_image, knockout="layer4.*", top_k=3)
    plain = result.results["resnet50"].knockout
    assert not plain.affected and plain.gates == [] and plain.target_change == 0.0 and plain.iou_top20 == 1.0
    np.testing.assert_array_equal(plain.heatmap, result.results["resnet50"].heatmap)
    for variant in ("se", "cbam", "eca"):
        trained = result.results[variant]
        knocked = trained.knockout
        assert knocked.affected and all(g.startswith("layer4.") for g in knocked.gates)
        assert knocked.target.index == trained.target.index and knocked.value == "identity"
        assert knocked.target_change == pytest.approx(knocked.target.probability - trained.target.probability)
        assert not np.allclose(knocked.probabilities, trained.probabilities)
        assert len(knocked.top) == 3 and 0.0 <= knocked.iou_top20 <= 1.0
    summary = result.summary()["models"]
    assert summary["cbam"]["knockout"]["gates"][:2] == ["layer4.0:channel", "layer4.0:spatial"]
    assert summary["resnet50"]["knockout"]["note"].endswith("unaffected")


def test_explain_without_stored_means_says_how_to_store_them(tiny_explainer, scene_image):
    with pytest.raises(AttnvizError, match="python -m attnviz.knockout fit"):
        tiny_explainer.explain(scene_image, knockout="all", knockout_value="mean", variants=("se",))


def test_a_bad_spec_fails_before_any_model_runs(tiny_explainer, scene_image, monkeypatch):
    ran = []
    monkeypatch.setattr(tiny_explainer.explainers["se"], "explain", lambda *a, **k: ran.append(1))
    with pytest.raises(AttnvizError, match="knock-out 'layer9' is not valid"):
        tiny_explainer.explain(scene_image, knockout="layer9")
    assert ran == []


def test_stored_means_are_sha256_checked_like_weights(tmp_path):
    from conftest import make_model_set

    from attnviz.weights import Manifest, load_model_set

    weights = make_model_set(tmp_path, "two", variants=("se",))
    file = "two/se.gate_means.safetensors"
    means = {g.key: torch.full((8,), 0.5) for g in model_gates(build_resnet50("se", num_classes=4))}
    sha = write_safetensors(means, weights / file)
    manifest = Manifest(weights)
    manifest.data["sets"]["two"]["models"]["se"]["gate_means"] = {"file": file, "sha256": sha}
    manifest.save()
    loader = load_model_set("two", weights).gate_means_loader("se")
    assert loader()["layer1.0:channel"].dtype == torch.float32
    (weights / file).write_bytes((weights / file).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(AttnvizError, match="sha256"):
        load_model_set("two", weights).gate_means_loader("se")()
