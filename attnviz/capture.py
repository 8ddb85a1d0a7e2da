"""The capture core: the one owner of hooks and per-request state on a model.

A ``Capture`` is a context manager around one model for one request. While it is open it holds the model's
lock and has forward hooks on

* the target layers: their outputs on the image's own pass are kept as activations; the earliest becomes a
  leaf that needs a gradient, so backpropagation stops there (no deeper, no parameter gradients);
* every attention gate the model's families declare: what each gate output on the image's own pass is kept as
  that block's record (detached, float32); a gate named in ``replace`` outputs the given value instead, on
  every pass (knock-out: the record then shows the value the network used);
* with ``features=True``, the classifier's input (the pooled layer4 features, (batch, 2048)), detached, for the
  out-of-domain score (``attnviz.domain``): it comes from the same pass, so it costs no extra one.

Only the image's own pass (``run``) is captured; later passes inside the same ``with`` block (Score-CAM's
masked copies, pytorch-grad-cam's own call) go through unrecorded. Leaving the block removes every hook and
releases the lock, after success or failure. Attention modules themselves hold no request's data.

    with Capture(model, ["layer4"], needs_grad=True) as capture:
        logits = capture.run(x)
        gradient = capture.gradients(logits, [3])["layer4"]
        capture.records(0)   # [BlockAttention(block="layer1.0", ...), ...] of image 0
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from attnviz.attention import AttentionFamily, GateSpec, attention_blocks

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises every capture on ``model`` (hooks on a module fire for every pass through it)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@dataclass
class BlockAttention:
    """What one block's attention computed on one image: one record per gate, by record name."""

    block: str  # e.g. "layer3.2"
    family: str  # the family's key, e.g. "cbam"
    records: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "channel_weights" -> (channels,)
    kinds: dict[str, str] = field(default_factory=dict)  # record name -> record kind ("channel", "spatial")

    @property
    def stage(self) -> str:
        return self.block.split(".")[0]

    def of_kind(self, kind: str) -> np.ndarray | None:
        """The first record of ``kind``, or None when the block has none."""
        for name, found in self.kinds.items():
            if found == kind:
                return self.records[name]
        return None

    @property
    def channel_weights(self) -> np.ndarray | None:
        return self.of_kind("channel")

    @property
    def spatial_map(self) -> np.ndarray | None:
        return self.of_kind("spatial")


@dataclass(frozen=True)
class Gate:
    """A gate found in a model: its block, family, declaration and module."""

    block: str
    family: AttentionFamily
    spec: GateSpec
    module: nn.Module

    @property
    def key(self) -> str:
        """The gate's name in knock-out specs, results and stored means: ``layer3.2:channel``."""
        return f"{self.block}:{self.spec.name}"


def model_gates(model: nn.Module) -> list[Gate]:
    """Every gate of every attention module of ``model``, in forward order."""
    return [Gate(block, entry, spec, module.get_submodule(spec.path))
            for block, entry, module in attention_blocks(model) for spec in entry.gates]


def _replacement(value: torch.Tensor | float, output: torch.Tensor) -> torch.Tensor:
    """What a knocked-out gate outputs instead of ``output``: a constant, or one image's values for every image
    (a spatial map stored at another resolution is resized to the output's)."""
    if not isinstance(value, torch.Tensor):
        return torch.full_like(output, float(value))
    value = value.to(device=output.device, dtype=output.dtype)
    if value.dim() == 2 and tuple(value.shape) != tuple(output.shape[-2:]):
        value = torch.nn.functional.interpolate(value[None, None], size=output.shape[-2:], mode="bilinear",
                                                align_corners=False)[0, 0]
    return value.reshape(output.shape[1:]).expand_as(output)


def _as_record(kind: str, output: torch.Tensor) -> np.ndarray:
    """A gate's output as (batch, ...) float32: (batch, channels) or (batch, height, width)."""
    values = output.detach().float()
    if kind == "channel":
        values = values.reshape(values.shape[0], -1)
    elif kind == "spatial":
        values = values.reshape(values.shape[0], *values.shape[-2:])
    return values.cpu().numpy().copy()


class Capture:
    """Hooks for one request on one model; see the module docstring."""

    def __init__(self, model: nn.Module, layers: Sequence[str] = (), *, needs_grad: bool = False,
                 records: bool = True, replace: dict[str, torch.Tensor | float] | None = None,
                 gates: list[Gate] | None = None, features: bool = False) -> None:
        """``replace``: gate key -> what the gate outputs instead, on every pass inside the capture (knock-out).
        ``gates``: the model's gates when the caller has them already (``model_gates(model)`` otherwise).
        ``features``: keep the classifier's input of the image's own pass as ``self.features``."""
        self.model = model
        self.want_features = features
        self.features: torch.Tensor | None = None
        self.layers = list(dict.fromkeys(layers))
        self.needs_grad = needs_grad
        self.replace = dict(replace or {})
        self.activations: dict[str, torch.Tensor] = {}
        self.gates = (model_gates(model) if gates is None else list(gates)) if records or self.replace else []
        unknown = set(self.replace) - {g.key for g in self.gates}
        if unknown:
            raise ValueError(f"no gate {sorted(unknown)[0]!r} in this model")
        self._records: list[np.ndarray | None] = [None] * len(self.gates)
        self._recording = False
        self._handles: list = []
        self._lock = model_lock(model)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Capture:
        self._lock.acquire()
        try:
            for name in self.layers:
                self._handles.append(self.model.get_submodule(name).register_forward_hook(self._layer_hook(name)))
            for i, gate in enumerate(self.gates):
                self._handles.append(gate.module.register_forward_hook(self._gate_hook(i, gate)))
            if self.want_features:
                self._handles.append(self.model.get_submodule("fc").register_forward_pre_hook(self._features_hook))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._recording = False
        self._lock.release()

    def _layer_hook(self, name: str):
        def hook(module, inputs, output):
            if not self._recording:
                return None
            if self.needs_grad and not output.requires_grad:
                output = output.detach().requires_grad_(True)  # the leaf backprop stops at
            self.activations[name] = output
            return output

        return hook

    def _features_hook(self, module, inputs):
        if self._recording:
            self.features = inputs[0].detach().float()

    def _gate_hook(self, index: int, gate: Gate):
        value = self.replace.get(gate.key)

        def hook(module, inputs, output):
            if value is not None:
                output = _replacement(value, output)
            if self._recording:
                self._records[index] = _as_record(gate.spec.kind, output)
            return output if value is not None else None

        return hook

    # ------------------------------------------------------------------ the pass

    def run(self, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """The image's own pass: logits, with the target layers' activations and the gates' records kept."""
        if not self._handles and (self.layers or self.gates or self.want_features):
            raise RuntimeError("Capture.run needs the capture open: use it as `with Capture(...) as capture`")
        self.activations.clear()
        self.features = None
        self._records = [None] * len(self.gates)
        self._recording = True
        try:
            bf16 = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
            with torch.set_grad_enabled(self.needs_grad), bf16:
                return self.model(x)
        finally:
            self._recording = False

    def gradients(self, logits: torch.Tensor, targets: Sequence[int], retain_graph: bool = False
                  ) -> dict[str, torch.Tensor]:
        """Gradients of each image's target logit with respect to every target layer (one backward).

        ``targets`` has one class per image of the batch: each image's logit depends on its own activations
        only, so one backward of their sum gives every image its own gradient.
        """
        index = torch.as_tensor(list(targets), device=logits.device).view(-1, 1)
        score = logits.gather(1, index).sum()
        grads = torch.autograd.grad(score, [self.activations[name] for name in self.layers],
                                    retain_graph=retain_graph)
        return dict(zip(self.layers, grads, strict=True))

    def raw_records(self) -> list[np.ndarray | None]:
        """Each gate's (batch, ...) record of the last pass, in the order of ``gates``."""
        return list(self._records)

    def block_records(self) -> dict[str, dict[str, np.ndarray]]:
        """block -> record name -> (batch, ...) array, for every gate of the image's own pass."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for gate, values in zip(self.gates, self._records, strict=True):
            if values is not None:
                out.setdefault(gate.block, {})[gate.spec.record] = values
        return out

    def records(self, image: int = 0) -> list[BlockAttention]:
        """One BlockAttention per attention block for image ``image`` of the batch, in forward order."""
        found: dict[str, BlockAttention] = {}
        for gate, values in zip(self.gates, self._records, strict=True):
            if values is None:
                continue
            entry = found.setdefault(gate.block, BlockAttention(gate.block, gate.family.key))
            entry.records[gate.spec.record] = values[image].copy()
            entry.kinds[gate.spec.record] = gate.spec.kind
        return list(found.values())

