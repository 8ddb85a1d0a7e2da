"""Squeeze-and-Excitation (Hu et al., CVPR 2018): avg-pool, FC C->C/r, ReLU, FC C/r->C, sigmoid, scale."""

from __future__ import annotations

import torch
from torch import nn

from attnviz.attention.registry import AttentionFamily, GateSpec


class SqueezeExcitation(nn.Module):
    """SE block; ``sigmoid`` is the gate: its output, (batch, channels) in (0, 1), scales the channels."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Linear(channels, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, channels, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.sigmoid(self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * weights[:, :, None, None].to(x.dtype)


def check_options(options: dict) -> dict:
    """SE's one option, the reduction ratio r (16 in the paper)."""
    options = dict(options)
    reduction = int(options.pop("reduction", 16))
    if options:
        raise ValueError(f"unknown SE options {sorted(options)}; SE takes reduction")
    if reduction < 1:
        raise ValueError(f"reduction must be at least 1, got {reduction}")
    return {"reduction": reduction}


FAMILY = AttentionFamily(
    key="se",
    title="ResNet50 + SE",
    short="+SE",
    colour="#ff7f0e",
    module=SqueezeExcitation,
    build=lambda channels, options: SqueezeExcitation(channels, options["reduction"]),
    check_options=check_options,
    gates=(GateSpec("channel", "sigmoid", "channel_weights", "channel", "channel attention (SE)"),),
    reference="Hu et al., Squeeze-and-Excitation Networks, CVPR 2018",
)
