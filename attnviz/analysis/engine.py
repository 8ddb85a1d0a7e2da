"""Units of analysis work and the engines that run them.

Every measuring phase of the analysis (the val scenes that choose the IoU threshold, localisation per split,
Score-CAM, faithfulness) is cut into units: one batch of scenes, or one scene for the slow per-scene phases. A unit
is measured into a fresh context and its values are added to the run's in the units' order, so the numbers are
the same whichever engine ran the units and in whatever order they finished: ``LocalEngine`` runs them here, one
after another; ``attnviz.analysis.on_ray.RayEngine`` spreads them over Ray workers, each of which writes its
units' values into a work folder from which the driver adds them, and a run that stopped finds them there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from attnviz.analysis.run import _Context


@dataclass(frozen=True)
class Unit:
    """One piece of a phase: scenes ``start``..``stop``-1 of ``split`` (faithfulness: item ``start`` of the
    faithfulness scenes); ``position`` is the place of its first CAM among the split's CAMs."""

    phase: str  # val, localise, scorecam, faithfulness, knockout or sanity
    split: str
    start: int
    stop: int
    position: int

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.split}-{self.start:06d}-{self.stop:06d}"

    @property
    def scenes(self) -> int:
        return self.stop - self.start


def plan_units(source, phase: str, split: str, count: int, batch_size: int) -> list[Unit]:
    """``count`` scenes of ``split`` in batches of about ``batch_size`` CAMs (a two-object scene has two)."""
    per_scene = source.items_per_scene(split)
    step = max(1, math.ceil(batch_size / per_scene))
    return [Unit(phase, split, start, min(start + step, count), start * per_scene)
            for start in range(0, count, step)]


def plan_sample_units(phase: str, count: int, size: int) -> list[Unit]:
    """A section's ``count`` test scenes in units of ``size``; ``start`` and ``stop`` are places in the section's
    sample (``sample_items``), not in the split."""
    return [Unit(phase, "test", start, min(start + size, count), start) for start in range(0, count, size)]


def sample_items(ctx: _Context, count: int, unit: Unit) -> list:
    """The items of ``unit``'s places in a section's sample of ``count`` test scenes (the first test scenes; a
    folder's images: drawn at random)."""
    return [item for i in ctx.source.sample(count)[unit.start : unit.stop] for item in ctx.source.items("test", i)]


class Engine(Protocol):
    def run(self, ctx: _Context, units: list[Unit], desc: str) -> None:
        """Measure every unit and add its values to ``ctx`` in the units' order."""


class LocalEngine:
    """The units one after another in this process."""

    def run(self, ctx: _Context, units: list[Unit], desc: str) -> None:
        from attnviz.analysis.run import run_unit

        with ctx.bar(sum(u.scenes for u in units), desc) as bar:
            for unit in units:
                part = ctx.fresh(faith_inputs=unit.phase == "faithfulness")
                run_unit(part, unit)
                ctx.absorb(part.partial())
                bar.update(unit.scenes)
