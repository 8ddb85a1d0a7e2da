"""One builder: ResNet50, +SE, +CBAM with torchvision's names and the reference parameter counts."""

import pytest
import torch

from attnviz.attention import attention_blocks
from attnviz.attention.cbam import CBAM
from attnviz.attention.eca import EfficientChannelAttention
from attnviz.attention.se import SqueezeExcitation
from attnviz.models import VARIANTS, ModelSpec, build_resnet50, parameter_count

REFERENCE_COUNTS = {"resnet50": 25_557_032, "se": 28_088_024, "cbam": 28_089_624, "eca": 25_557_118}


def test_every_registered_family_has_a_reference_count():
    assert set(VARIANTS) == set(REFERENCE_COUNTS)


@pytest.mark.parametrize("variant", list(REFERENCE_COUNTS))
def test_parameter_count_at_1000_classes_equals_the_reference(variant):
    assert parameter_count(build_resnet50(variant)) == REFERENCE_COUNTS[variant]


def test_plain_resnet50_has_torchvisions_exact_state_dict_keys():
    from torchvision.models import resnet50

    ours = build_resnet50("resnet50").state_dict()
    theirs = resnet50().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("variant, kind", [("se", SqueezeExcitation), ("cbam", CBAM),
                                           ("eca", EfficientChannelAttention)])
def test_every_bottleneck_gets_one_attention_module_of_the_variant(variant, kind):
    model = build_resnet50(variant, num_classes=5)
    blocks = list(attention_blocks(model))
    assert [name for name, _, _ in blocks][:4] == ["layer1.0", "layer1.1", "layer1.2", "layer2.0"]
    assert len(blocks) == 16 and all(isinstance(m, kind) and f.key == variant for _, f, m in blocks)
    for name in ("conv1", "layer1", "layer2", "layer3", "layer4", "fc"):
        assert hasattr(model, name)


def test_plain_variant_has_no_attention_modules():
    assert list(attention_blocks(build_resnet50("resnet50", num_classes=5))) == []


@pytest.mark.parametrize("variant", ["se", "cbam", "eca"])
def test_attention_acts_on_the_residual_branch_after_bn3_before_the_addition(variant):
    model = build_resnet50(variant, num_classes=5).eval()
    block = model.layer2[0]  # has a downsample shortcut
    seen = {}
    block.bn3.register_forward_hook(lambda m, i, o: seen.__setitem__("bn3", o))
    block.attention.register_forward_hook(lambda m, i, o: seen.__setitem__("attention", (i[0], o)))
    block.downsample.register_forward_hook(lambda m, i, o: seen.__setitem__("shortcut", o))
    x = torch.randn(1, 256, 16, 16)
    out = block(x)
    attention_in, attention_out = seen["attention"]
    assert torch.equal(attention_in, seen["bn3"])
    torch.testing.assert_close(out, torch.relu(attention_out + seen["shortcut"]))


def test_spec_round_trips_through_manifest_options():
    spec = ModelSpec.from_options(
        "cbam", 7, {"reduction": 16, "pooling": "max", "spatial_kernel": 3, "arrangement": "parallel"}
    )
    assert ModelSpec.from_options("cbam", 7, spec.attention_options()) == spec
    model = build_resnet50("cbam", num_classes=7, pooling="max", spatial_kernel=3)
    assert model.layer1[0].attention.spatial_gate.conv.kernel_size == (3, 3)


def test_unknown_variant_or_option_is_refused():
    with pytest.raises(ValueError):
        ModelSpec(variant="bam", num_classes=3)
    with pytest.raises(ValueError):
        ModelSpec.from_options("se", 3, {"pooling": "max"})


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_gives_one_logit_per_class(variant):
    model = build_resnet50(variant, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)
