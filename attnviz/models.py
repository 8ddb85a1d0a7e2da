"""One builder: ResNet50 with any registered attention family (or none).

The networks are torchvision's ResNet and Bottleneck; the attention module sits on the residual branch after
bn3 and before the addition, as in the SE, CBAM and ECA papers. Module names stay torchvision's (conv1,
layer1..layer4, fc), so a target layer names the same place in every variant, and the attention module of a
block is ``layerI.J.attention``.

    model = build_resnet50("eca", num_classes=12)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from attnviz.attention import families, family, family_keys

VARIANTS = family_keys()  # ("resnet50", "se", "cbam", "eca"): every registered family, in display order
VARIANT_TITLES = {f.key: f.title for f in families()}
RESNET50_LAYERS = (3, 4, 6, 3)
TARGET_LAYERS = ("layer1", "layer2", "layer3", "layer4")  # the stages: the usual CAM targets
# Modules inside a block that can be a CAM's target (their output is the block's feature map at some step).
# bn1 and bn2 are not: an in-place ReLU overwrites their output right after it is made.
BLOCK_TARGETS = ("conv1", "conv2", "conv3", "bn3")


@dataclass(frozen=True)
class ModelSpec:
    """What defines an architecture: the variant (an attention family), its options and the head size.

    ``options`` are the family's attention options as checked by the family (defaults filled in).
    """

    variant: str
    num_classes: int
    options: dict = field(default_factory=dict, compare=True, hash=False)
    layers: tuple[int, int, int, int] = RESNET50_LAYERS

    def __post_init__(self) -> None:
        entry = family(self.variant)  # ValueError naming the registered families
        object.__setattr__(self, "options", entry.check_options(dict(self.options)))

    @property
    def title(self) -> str:
        return family(self.variant).title

    def attention_options(self) -> dict:
        """The attention options as stored in a manifest entry."""
        return dict(self.options)

    @classmethod
    def from_options(cls, variant: str, num_classes: int, options: dict | None = None) -> ModelSpec:
        return cls(variant=variant, num_classes=num_classes, options=dict(options or {}))


class AttentionBottleneck(Bottleneck):
    """torchvision's Bottleneck with an optional attention module after bn3."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attention: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attention is not None:
            out = self.attention(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


def build_model(spec: ModelSpec) -> ResNet:
    """Build the network described by ``spec`` with freshly initialised weights."""
    model = ResNet(AttentionBottleneck, list(spec.layers), num_classes=spec.num_classes)
    entry = family(spec.variant)
    if entry.build is not None:
        for stage in TARGET_LAYERS:
            for block in getattr(model, stage):
                block.attention = entry.build(block.conv3.out_channels, spec.options)
    return model


def build_resnet50(variant: str = "resnet50", num_classes: int = 1000, **options) -> ResNet:
    """ResNet50 with the attention family ``variant`` (one of ``VARIANTS``); ``options`` are the family's."""
    return build_model(ModelSpec.from_options(variant, num_classes, options))


def target_layer_names(variant: str) -> list[str]:
    """Every valid CAM target of a variant, earliest first: the stages, every block (``layer3.5``), and the
    modules inside a block (``layer4.2.conv3``, ``layer4.2.bn3``, ``layerN.0.downsample``, and
    ``layerN.M.attention`` for a family with attention)."""
    names = list(TARGET_LAYERS)
    for stage, blocks in zip(TARGET_LAYERS, RESNET50_LAYERS, strict=True):
        for i in range(blocks):
            block = f"{stage}.{i}"
            names += [block, *(f"{block}.{m}" for m in BLOCK_TARGETS)]
            names += [f"{block}.downsample"] if i == 0 else []
            names += [f"{block}.attention"] if family(variant).has_attention else []
    return names


def target_layer_help() -> str:
    blocks = ", ".join(f"{s}.0-{s}.{n - 1}" for s, n in zip(TARGET_LAYERS, RESNET50_LAYERS, strict=True))
    return (f"a stage ({', '.join(TARGET_LAYERS)}), a block ({blocks}) or a module inside a block "
            f"({', '.join(BLOCK_TARGETS)}, downsample in a stage's first block, attention in a model with attention; "
            f"e.g. layer4.2.conv3)")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
