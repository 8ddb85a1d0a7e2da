"""SE, CBAM and ECA compute what the papers define; the capture core reads what their gates computed."""

import numpy as np
import pytest
import torch
from model_state import tensors_kept_on

from attnviz.attention.cbam import CBAM, CBAMOptions, ChannelGate, SpatialGate
from attnviz.attention.eca import EfficientChannelAttention, eca_kernel_size
from attnviz.attention.se import SqueezeExcitation
from attnviz.capture import Capture


@pytest.fixture
def features() -> torch.Tensor:
    return torch.randn(2, 32, 6, 5, generator=torch.Generator().manual_seed(0))


def _randomise_bn(bn: torch.nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.weight.fill_(1.3)
        bn.bias.fill_(-0.2)
        bn.running_mean.fill_(0.1)
        bn.running_var.fill_(2.0)


def test_se_scales_each_channel_by_the_excitation_of_its_average(features):
    se = SqueezeExcitation(32, reduction=16).eval()
    squeezed = features.mean(dim=(2, 3))
    weights = torch.sigmoid(se.fc2(torch.relu(se.fc1(squeezed))))
    torch.testing.assert_close(se(features), features * weights[:, :, None, None])
    assert se.fc1.out_features == 2 and se.fc1.bias is not None and se.fc2.bias is not None


def test_channel_gate_sums_the_shared_mlp_over_avg_and_max_descriptors(features):
    gate = ChannelGate(32, 16, "avg+max")
    mlp = lambda d: gate.fc2(torch.relu(gate.fc1(d)))  # noqa: E731
    expected = torch.sigmoid(mlp(features.mean(dim=(2, 3))) + mlp(features.amax(dim=(2, 3))))
    torch.testing.assert_close(gate(features), expected)


@pytest.mark.parametrize(
    "pooling, reducer", [("avg", lambda x: x.mean(dim=(2, 3))), ("max", lambda x: x.amax(dim=(2, 3)))]
)
def test_channel_gate_with_one_pooling_uses_only_that_descriptor(features, pooling, reducer):
    gate = ChannelGate(32, 16, pooling)
    expected = torch.sigmoid(gate.fc2(torch.relu(gate.fc1(reducer(features)))))
    torch.testing.assert_close(gate(features), expected)


def test_spatial_gate_reads_max_then_mean_over_channels(features):
    gate = SpatialGate(7).eval()
    _randomise_bn(gate.bn)
    with torch.no_grad():
        gate.conv.weight.zero_()
        gate.conv.weight[0, 0, 3, 3] = 1.0  # centre tap of input channel 0 only
    expected_max = torch.sigmoid(gate.bn(features.amax(dim=1, keepdim=True)))
    torch.testing.assert_close(gate(features), expected_max)
    with torch.no_grad():
        gate.conv.weight.zero_()
        gate.conv.weight[0, 1, 3, 3] = 1.0  # centre tap of input channel 1 only
    expected_mean = torch.sigmoid(gate.bn(features.mean(dim=1, keepdim=True)))
    torch.testing.assert_close(gate(features), expected_mean)


def test_spatial_gate_has_no_conv_bias_and_keeps_the_resolution(features):
    for kernel in (3, 7):
        gate = SpatialGate(kernel)
        assert gate.conv.bias is None and gate.conv.kernel_size == (kernel, kernel)
        assert gate(features).shape == (2, 1, 6, 5)


def test_fresh_spatial_gate_starts_at_one_half_as_in_the_official_init(features):
    assert torch.allclose(SpatialGate()(features), torch.full((2, 1, 6, 5), 0.5))


def _cbam(arrangement: str) -> CBAM:
    module = CBAM(32, 16, CBAMOptions(arrangement=arrangement)).eval()
    _randomise_bn(module.spatial_gate.bn)
    return module


def test_cbam_channel_then_spatial_is_the_default_and_applies_gates_in_order(features):
    assert CBAMOptions() == CBAMOptions(pooling="avg+max", spatial_kernel=7, arrangement="channel-spatial")
    cbam = _cbam("channel-spatial")
    refined = features * cbam.channel_gate(features)[:, :, None, None]
    torch.testing.assert_close(cbam(features), refined * cbam.spatial_gate(refined))


def test_cbam_spatial_then_channel_applies_the_spatial_gate_first(features):
    cbam = _cbam("spatial-channel")
    refined = features * cbam.spatial_gate(features)
    torch.testing.assert_close(cbam(features), refined * cbam.channel_gate(refined)[:, :, None, None])


def test_cbam_parallel_applies_both_gates_computed_from_the_same_input(features):
    cbam = _cbam("parallel")
    expected = features * cbam.channel_gate(features)[:, :, None, None] * cbam.spatial_gate(features)
    torch.testing.assert_close(cbam(features), expected)


def test_cbam_rejects_unknown_options():
    with pytest.raises(ValueError):
        CBAMOptions(pooling="sum")
    with pytest.raises(ValueError):
        CBAMOptions(spatial_kernel=5)
    with pytest.raises(ValueError):
        CBAMOptions(arrangement="serial")


def _seeded(factory, seed: int = 0) -> torch.nn.Module:
    """A module built from its own seed, whatever earlier tests left in the global random state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory().eval()


@pytest.mark.parametrize("factory", [lambda: SqueezeExcitation(32), lambda: CBAM(32),
                                     lambda: EfficientChannelAttention(32)], ids=["se", "cbam", "eca"])
def test_records_have_the_right_shapes_lie_in_0_1_and_hold_no_graph(factory, features):
    model = torch.nn.Sequential(_seeded(factory))
    x = features.clone().requires_grad_(True)
    with Capture(model) as capture:
        capture.run(x)
        (record,) = capture.records(0)
        batch = capture.block_records()["0"]
    assert record.block == "0"
    channel = record.channel_weights
    assert channel.shape == (32,) and channel.dtype == np.float32 and batch["channel_weights"].shape == (2, 32)
    assert bool(((channel > 0) & (channel < 1)).all())
    if isinstance(model[0], CBAM):
        spatial = record.spatial_map
        assert spatial.shape == (6, 5) and batch["spatial_map"].shape == (2, 6, 5)
        assert bool(((spatial > 0) & (spatial < 1)).all())
    else:
        assert record.spatial_map is None and set(record.records) == {"channel_weights"}
    assert tensors_kept_on(model) == []


def test_each_pass_replaces_the_previous_record_and_nothing_stays_on_the_module(features):
    model = torch.nn.Sequential(_seeded(lambda: CBAM(32), seed=1))
    with Capture(model) as capture:
        capture.run(features)
        first = capture.records(0)[0].channel_weights
        capture.run(features[1:] * 3)
        second = capture.block_records()["0"]["channel_weights"]
    assert second.shape == (1, 32) and not np.allclose(second[0], first)
    assert tensors_kept_on(model) == []
    assert not model[0].channel_gate._forward_hooks and not model[0].spatial_gate._forward_hooks


def test_only_the_images_own_pass_is_recorded(features):
    model = torch.nn.Sequential(_seeded(lambda: SqueezeExcitation(32), seed=2))
    with Capture(model) as capture:
        capture.run(features[:1])
        own = capture.records(0)[0].channel_weights
        model(features[1:] * 5)  # a later pass in the same request (e.g. Score-CAM's masked copies)
        assert np.array_equal(capture.records(0)[0].channel_weights, own)


def test_eca_kernel_follows_the_authors_rule():
    assert [eca_kernel_size(c) for c in (256, 512, 1024, 2048)] == [5, 5, 5, 7]
    assert eca_kernel_size(64) == 3 and eca_kernel_size(32) == 3
    module = EfficientChannelAttention(2048)
    assert module.conv.kernel_size == (7,) and module.conv.padding == (3,) and module.conv.bias is None
    assert module.conv.in_channels == 1 and module.conv.out_channels == 1


def test_eca_weights_each_channel_by_a_1d_convolution_of_its_neighbours_averages(features):
    module = EfficientChannelAttention(32).eval()  # kernel 3 at 32 channels
    with torch.no_grad():
        module.conv.weight.copy_(torch.tensor([[[0.5, -1.0, 2.0]]]))
    pooled = features.mean(dim=(2, 3))
    padded = torch.nn.functional.pad(pooled, (1, 1))
    logits = 0.5 * padded[:, :-2] - 1.0 * padded[:, 1:-1] + 2.0 * padded[:, 2:]
    torch.testing.assert_close(module(features), features * torch.sigmoid(logits)[:, :, None, None])
