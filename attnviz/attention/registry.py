"""The registry of attention families: what each one builds, which gates it has and what it records.

A family is one module of this package plus one line in ``FAMILY_MODULES``. Its module defines ``FAMILY``, an
``AttentionFamily``: the module class it builds after bn3 of every bottleneck, how its options are checked,
its title, and its gates. A gate is a submodule whose output is the gate's weights (the sigmoid); the capture
core hooks it to read what the gate computed (its record) and, later, to switch it off. Everything outside
the family's own module asks this registry, never branches on a family's name.

    from attnviz.attention import family, families
    family("cbam").gates[1].name             # "spatial"
    [f.key for f in families()]              # ["resnet50", "se", "cbam", "eca"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module

from torch import nn

# One line per family: the order here is the order of the models everywhere (columns, tables, plots).
FAMILY_MODULES = (
    "attnviz.attention.se",
    "attnviz.attention.cbam",
    "attnviz.attention.eca",
)


@dataclass(frozen=True)
class RecordKind:
    """The shape of what a gate outputs, and how it becomes one image's record."""

    key: str  # "channel" or "spatial"
    description: str
    figure: str  # the stem of the figure drawn from every block's record of this kind, e.g. "channel_weights"


RECORD_KINDS: dict[str, RecordKind] = {
    k.key: k
    for k in (
        RecordKind("channel", "one weight per channel in (0, 1): (channels,)", "channel_weights"),
        RecordKind("spatial", "one weight per position in (0, 1): (height, width)", "spatial_maps"),
    )
}


@dataclass(frozen=True)
class GateSpec:
    """One gate of a family: its name, the submodule whose output is its weights, and what it records."""

    name: str  # e.g. "channel", "spatial"; the attention lab switches gates off by these names
    path: str  # submodule of the family's module whose forward returns the gate's weights
    record: str  # the record's name, e.g. "channel_weights" (also the key in exported attention.npz)
    kind: str  # a key of RECORD_KINDS
    title: str  # what a person reads, e.g. "channel attention"

    def __post_init__(self) -> None:
        if self.kind not in RECORD_KINDS:
            raise ValueError(f"gate {self.name!r}: unknown record kind {self.kind!r}; one of {sorted(RECORD_KINDS)}")


@dataclass(frozen=True)
class AttentionFamily:
    """A kind of attention module placed on the residual branch after bn3 of every bottleneck."""

    key: str  # the variant's key in manifests, APIs and file names: "se"
    title: str  # the model's English title, "ResNet50 + SE"; translations live with the app's texts
    short: str  # a short label for tight places, "+SE"
    colour: str  # the model's colour in every comparison plot
    module: type[nn.Module] | None  # the class it builds (None: the plain ResNet50)
    build: Callable[[int, dict], nn.Module] | None  # (channels, checked options) -> module
    check_options: Callable[[dict], dict] = field(default=lambda options: _no_options(options))
    gates: tuple[GateSpec, ...] = ()
    reference: str = ""

    @property
    def has_attention(self) -> bool:
        return self.module is not None

    def gate(self, name: str) -> GateSpec:
        for gate in self.gates:
            if gate.name == name:
                return gate
        raise KeyError(name)

    def kinds(self) -> set[str]:
        return {gate.kind for gate in self.gates}


def _no_options(options: dict) -> dict:
    if options:
        raise ValueError(f"no attention options are taken, got {sorted(options)}")
    return {}


PLAIN = AttentionFamily(key="resnet50", title="ResNet50", short="ResNet50", colour="#1f77b4", module=None,
                        build=None, reference="He et al., CVPR 2016")


@cache
def _registry() -> dict[str, AttentionFamily]:
    found = {PLAIN.key: PLAIN}
    for name in FAMILY_MODULES:
        entry: AttentionFamily = import_module(name).FAMILY
        if entry.key in found:
            raise ValueError(f"{name}: family key {entry.key!r} is registered twice")
        found[entry.key] = entry
    return found


def families() -> list[AttentionFamily]:
    """Every registered family, the plain ResNet50 first."""
    return list(_registry().values())


def family_keys() -> tuple[str, ...]:
    return tuple(_registry())


def family(key: str) -> AttentionFamily:
    """The family of a variant key; ValueError naming the registered ones otherwise."""
    try:
        return _registry()[key]
    except KeyError:
        raise ValueError(f"unknown attention family {key!r}; registered: {', '.join(_registry())}") from None


def family_of_module(module: nn.Module) -> AttentionFamily | None:
    """The family whose module class ``module`` is, or None for any other module."""
    for entry in _registry().values():
        if entry.module is not None and type(module) is entry.module:
            return entry
    return None


def attention_blocks(model: nn.Module) -> Iterator[tuple[str, AttentionFamily, nn.Module]]:
    """(block name, family, attention module) for every attention module of ``model``, in forward order.

    The block name drops the module's own name: ``layer3.2.attention`` is block ``layer3.2``.
    """
    for name, module in model.named_modules():
        entry = family_of_module(module)
        if entry is not None:
            yield name.rpartition(".")[0] if name.endswith(".attention") else name, entry, module
