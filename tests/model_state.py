"""What a request may leave on a network, for tests that check it left nothing."""

from __future__ import annotations

import torch


def tensors_kept_on(model: torch.nn.Module) -> list[str]:
    """Tensors held by a module outside its parameters and buffers: a request's data left on the network."""
    kept = []
    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not attribute.startswith("_"):
                kept.append(f"{name or 'model'}.{attribute}")
    return kept
