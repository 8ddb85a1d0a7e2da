"""One builder for ResNet50 with no attention, SE or CBAM.

The networks are torchvision's ResNet and Bottleneck; the attention module sits
on the residual branch after bn3 and before the addition, as in both papers.
Module names stay torchvision's (conv1, layer1..layer4, fc), so a target layer
names the same place in every variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from attnviz.attention import CBAM, CBAMOptions, SqueezeExcitation

VARIANTS = ("resnet50", "se", "cbam")
VARIANT_TITLES = {"resnet50": "ResNet50", "se": "ResNet50 + SE", "cbam": "ResNet50 + CBAM"}
RESNET50_LAYERS = (3, 4, 6, 3)
TARGET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class ModelSpec:
    """What defines an architecture: the variant, its attention options and the head size."""

    variant: str
    num_classes: int
    reduction: int = 16
    cbam: CBAMOptions = field(default_factory=CBAMOptions)
    layers: tuple[int, int, int, int] = RESNET50_LAYERS

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    @property
    def title(self) -> str:
        return VARIANT_TITLES[self.variant]

    def attention_options(self) -> dict:
        """The attention options as stored in a manifest entry."""
        if self.variant == "resnet50":
            return {}
        options: dict = {"reduction": self.reduction}
        if self.variant == "cbam":
            options.update(self.cbam.to_dict())
        return options

    @classmethod
    def from_options(cls, variant: str, num_classes: int, options: dict | None = None) -> ModelSpec:
        options = dict(options or {})
        reduction = int(options.pop("reduction", 16))
        cbam = CBAMOptions(**options) if variant == "cbam" else CBAMOptions()
        if variant != "cbam" and options:
            raise ValueError(f"unknown attention options for {variant}: {sorted(options)}")
        return cls(variant=variant, num_classes=num_classes, reduction=reduction, cbam=cbam)


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
    if spec.variant != "resnet50":
        for stage in TARGET_LAYERS:
            for block in getattr(model, stage):
                channels = block.conv3.out_channels
                if spec.variant == "se":
                    block.attention = SqueezeExcitation(channels, spec.reduction)
                else:
                    block.attention = CBAM(channels, spec.reduction, spec.cbam)
    return model


def build_resnet50(variant: str = "resnet50", num_classes: int = 1000, **options) -> ResNet:
    """ResNet50, ResNet50+SE or ResNet50+CBAM (``variant`` in ``VARIANTS``)."""
    return build_model(ModelSpec.from_options(variant, num_classes, options))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
