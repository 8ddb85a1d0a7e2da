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
TARGET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


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


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
