"""CBAM (Woo et al., ECCV 2018): a channel gate, then a spatial gate, with the paper's ablations as options.

Channel gate: global avg-pool and max-pool through one shared MLP (C -> C/16 -> C, biases), summed, sigmoid.
Spatial gate: per position [max, mean] over channels, 7x7 conv (no bias), BatchNorm, sigmoid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from attnviz.attention.registry import AttentionFamily, GateSpec

CBAM_POOLINGS = ("avg", "max", "avg+max")
CBAM_ARRANGEMENTS = ("channel-spatial", "spatial-channel", "parallel")
SPATIAL_KERNELS = (3, 7)


class ChannelGate(nn.Module):
    """CBAM channel gate: pooled descriptors through one shared MLP, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16, pooling: str = "avg+max") -> None:
        super().__init__()
        if pooling not in CBAM_POOLINGS:
            raise ValueError(f"pooling must be one of {CBAM_POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        hidden = channels // reduction
        self.fc1 = nn.Linear(channels, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, channels, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def _mlp(self, descriptor: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(descriptor)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the channel weights, (batch, channels) in (0, 1)."""
        logits = 0
        if "avg" in self.pooling:
            logits = logits + self._mlp(x.mean(dim=(2, 3)))
        if "max" in self.pooling:
            logits = logits + self._mlp(x.flatten(2).max(dim=2).values)
        return torch.sigmoid(logits)


class SpatialGate(nn.Module):
    """CBAM spatial gate: [max, mean] over channels, k x k conv (no bias), BN, sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size not in SPATIAL_KERNELS:
            raise ValueError(f"kernel_size must be one of {SPATIAL_KERNELS}, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        # As in the official code: the gate starts at sigmoid(0) = 0.5 everywhere.
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the spatial map, (batch, 1, height, width) in (0, 1)."""
        pooled = torch.cat([x.max(dim=1, keepdim=True).values, x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


@dataclass(frozen=True)
class CBAMOptions:
    """The CBAM paper's ablations; the defaults are its best configuration."""

    pooling: str = "avg+max"
    spatial_kernel: int = 7
    arrangement: str = "channel-spatial"

    def __post_init__(self) -> None:
        if self.pooling not in CBAM_POOLINGS:
            raise ValueError(f"pooling must be one of {CBAM_POOLINGS}, got {self.pooling!r}")
        if self.spatial_kernel not in SPATIAL_KERNELS:
            raise ValueError(f"spatial_kernel must be one of {SPATIAL_KERNELS}")
        if self.arrangement not in CBAM_ARRANGEMENTS:
            raise ValueError(f"arrangement must be one of {CBAM_ARRANGEMENTS}")

    def to_dict(self) -> dict:
        return asdict(self)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel gate then spatial gate (or as the options arrange them)."""

    def __init__(self, channels: int, reduction: int = 16, options: CBAMOptions | None = None) -> None:
        super().__init__()
        self.options = options or CBAMOptions()
        self.channel_gate = ChannelGate(channels, reduction, self.options.pooling)
        self.spatial_gate = SpatialGate(self.options.spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arrangement = self.options.arrangement
        if arrangement == "channel-spatial":
            x = x * self.channel_gate(x)[:, :, None, None].to(x.dtype)
            return x * self.spatial_gate(x).to(x.dtype)
        if arrangement == "spatial-channel":
            x = x * self.spatial_gate(x).to(x.dtype)
            return x * self.channel_gate(x)[:, :, None, None].to(x.dtype)
        # parallel: both gates read the same input, both are applied to it
        channel = self.channel_gate(x)
        spatial = self.spatial_gate(x)
        return x * channel[:, :, None, None].to(x.dtype) * spatial.to(x.dtype)


def check_options(options: dict) -> dict:
    """reduction plus the paper's ablations (pooling, spatial_kernel, arrangement)."""
    options = dict(options)
    reduction = int(options.pop("reduction", 16))
    try:
        ablations = CBAMOptions(**options)
    except TypeError:
        raise ValueError(f"unknown CBAM options {sorted(options)}; CBAM takes reduction, pooling, "
                         f"spatial_kernel and arrangement") from None
    if reduction < 1:
        raise ValueError(f"reduction must be at least 1, got {reduction}")
    return {"reduction": reduction, **ablations.to_dict()}


def _build(channels: int, options: dict) -> CBAM:
    ablations = {k: v for k, v in options.items() if k != "reduction"}
    return CBAM(channels, options["reduction"], CBAMOptions(**ablations))


FAMILY = AttentionFamily(
    key="cbam",
    title="ResNet50 + CBAM",
    short="+CBAM",
    colour="#2ca02c",
    module=CBAM,
    build=_build,
    check_options=check_options,
    gates=(
        GateSpec("channel", "channel_gate", "channel_weights", "channel", "channel attention (CBAM)"),
        GateSpec("spatial", "spatial_gate", "spatial_map", "spatial", "spatial attention (CBAM)"),
    ),
    reference="Woo et al., CBAM: Convolutional Block Attention Module, ECCV 2018",
)
