"""Squeeze-and-Excitation and CBAM attention modules, written from the papers.

Every module keeps what it computed on its last forward pass (detached, so no
autograd graph is held) for the app to show without a second pass:

* ``last_channel_weights``: (batch, channels) in (0, 1) for SE and CBAM,
* ``last_spatial_map``: (batch, height, width) in (0, 1) for CBAM.

``clear_records`` drops them so nothing of one request reaches the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

CBAM_POOLINGS = ("avg", "max", "avg+max")
CBAM_ARRANGEMENTS = ("channel-spatial", "spatial-channel", "parallel")
SPATIAL_KERNELS = (3, 7)


class RecordingAttention(nn.Module):
    """Base class: an attention module that remembers its last output weights."""

    last_channel_weights: torch.Tensor | None
    last_spatial_map: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.last_channel_weights = None
        self.last_spatial_map = None

    def clear_records(self) -> None:
        self.last_channel_weights = None
        self.last_spatial_map = None


class SqueezeExcitation(RecordingAttention):
    """SE block (Hu et al.): avg-pool, FC C->C/r, ReLU, FC C/r->C, sigmoid, scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Linear(channels, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, channels, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3))
        weights = torch.sigmoid(self.fc2(self.relu(self.fc1(squeezed))))
        self.last_channel_weights = weights.detach()
        return x * weights[:, :, None, None].to(x.dtype)


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
            logits = logits + self._mlp(x.amax(dim=(2, 3)))
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
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
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


class CBAM(RecordingAttention):
    """Convolutional Block Attention Module (Woo et al.): channel gate then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, options: CBAMOptions | None = None) -> None:
        super().__init__()
        self.options = options or CBAMOptions()
        self.channel_gate = ChannelGate(channels, reduction, self.options.pooling)
        self.spatial_gate = SpatialGate(self.options.spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arrangement = self.options.arrangement
        if arrangement == "channel-spatial":
            channel = self.channel_gate(x)
            x = x * channel[:, :, None, None].to(x.dtype)
            spatial = self.spatial_gate(x)
            out = x * spatial.to(x.dtype)
        elif arrangement == "spatial-channel":
            spatial = self.spatial_gate(x)
            x = x * spatial.to(x.dtype)
            channel = self.channel_gate(x)
            out = x * channel[:, :, None, None].to(x.dtype)
        else:  # parallel: both gates read the same input, both are applied to it
            channel = self.channel_gate(x)
            spatial = self.spatial_gate(x)
            out = x * channel[:, :, None, None].to(x.dtype) * spatial.to(x.dtype)
        self.last_channel_weights = channel.detach()
        self.last_spatial_map = spatial.detach()[:, 0]
        return out


def attention_modules(model: nn.Module) -> Iterator[tuple[str, RecordingAttention]]:
    """Yield (block name, module) for every recording attention module, in forward order."""
    for name, module in model.named_modules():
        if isinstance(module, RecordingAttention):
            yield name.removesuffix(".attention"), module


def clear_records(model: nn.Module) -> None:
    for _, module in attention_modules(model):
        module.clear_records()
