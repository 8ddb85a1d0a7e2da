"""SE and CBAM compute what the papers define and record what they computed."""

import pytest
import torch

from attnviz.attention import CBAM, CBAMOptions, ChannelGate, SpatialGate, SqueezeExcitation, clear_records


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


@pytest.mark.parametrize("module", [SqueezeExcitation(32), CBAM(32)], ids=["se", "cbam"])
def test_records_have_the_right_shapes_lie_in_0_1_and_hold_no_graph(module, features):
    x = features.clone().requires_grad_(True)
    module(x)
    channel = module.last_channel_weights
    assert channel.shape == (2, 32) and channel.grad_fn is None and not channel.requires_grad
    assert bool(((channel > 0) & (channel < 1)).all())
    if isinstance(module, CBAM):
        spatial = module.last_spatial_map
        assert spatial.shape == (2, 6, 5) and spatial.grad_fn is None
        assert bool(((spatial > 0) & (spatial < 1)).all())
    else:
        assert module.last_spatial_map is None


def test_each_forward_replaces_the_previous_record_and_clear_drops_it(features):
    module = torch.nn.Sequential(CBAM(32))
    module(features)
    first = module[0].last_channel_weights.clone()
    module(features[:1] * 3)
    assert module[0].last_channel_weights.shape == (1, 32)
    assert not torch.equal(module[0].last_channel_weights, first[:1])
    clear_records(module)
    assert module[0].last_channel_weights is None and module[0].last_spatial_map is None
