"""Efficient Channel Attention (Wang et al., CVPR 2020, ECA-Net).

Global average pool, a 1-D convolution across the channel axis (one input and one output channel, no bias,
padding (k - 1) / 2), sigmoid, scale. No reduction: each channel's weight depends on its k neighbours. The
kernel follows the authors' rule t = int(|(log2(C) + b) / gamma|), k = t if t is odd else t + 1, with
gamma = 2 and b = 1: 5, 5, 5 and 7 for 256, 512, 1024 and 2048 channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnviz.attention.registry import AttentionFamily, GateSpec


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """The authors' adaptive kernel size for ``channels`` channels (always odd)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class EfficientChannelAttention(nn.Module):
    """ECA block; ``sigmoid`` is the gate: its output, (batch, channels) in (0, 1), scales the channels."""

    def __init__(self, channels: int, gamma: float = 2, b: float = 1) -> None:
        super().__init__()
        kernel = eca_kernel_size(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, kernel, padding=(kernel - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))[:, None, :]  # (batch, 1, channels): channels are the conv's length axis
        weights = self.sigmoid(self.conv(pooled)[:, 0])
        return x * weights[:, :, None, None].to(x.dtype)


def check_options(options: dict) -> dict:
    """gamma and b of the kernel-size rule (2 and 1 in the paper)."""
    options = dict(options)
    gamma = float(options.pop("gamma", 2))
    b = float(options.pop("b", 1))
    if options:
        raise ValueError(f"unknown ECA options {sorted(options)}; ECA takes gamma and b")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return {"gamma": gamma, "b": b}


FAMILY = AttentionFamily(
    key="eca",
    title="ResNet50 + ECA",
    short="+ECA",
    colour="#9467bd",
    module=EfficientChannelAttention,
    build=lambda channels, options: EfficientChannelAttention(channels, options["gamma"], options["b"]),
    check_options=check_options,
    gates=(GateSpec("channel", "sigmoid", "channel_weights", "channel", "channel attention (ECA)"),),
    reference="Wang et al., ECA-Net: Efficient Channel Attention for Deep CNNs, CVPR 2020",
)
