"""``python -m attnviz.analyze --engine ray``: the analysis' measuring phases on a Ray cluster.

The driver (the command) checks the set and the options as the local run does and plans the same units
(``attnviz.analysis.engine``). One actor per worker (``--worker-cpus`` CPUs, torch threads set to them) loads
the model set once; for each unit it is given it measures the unit into a fresh context and writes the values
into the work folder itself (``<out>/.attnviz-work``), so maps and per-scene values never travel through Ray's
object store; only the file's name comes back. The driver adds the units' values in the units' order, so the
numbers are the local run's. A unit already in the work folder, written by a run with the same set, options and
data (and, for the phases that use it, the same IoU threshold), is not measured again: an interrupted run goes
on where it stopped. The work folder is removed once the report is written. The faithfulness phase reads each
scene's maps from a file the driver writes there. Units whose actor dies are given to another (see
``attnviz.distributed.run_tasks``). The knock-out and sanity sections' scenes are units too. The workers
run on CPUs only, even on a cluster with GPUs: the measuring code (faithfulness' masked copies, ROAD) makes its
tensors on the CPU, and it has not been run on a GPU.

On a real cluster the weights folder, ``--out`` and, with ``--images``, the images and masks must be at the same
path on every node (a shared file system).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

from attnviz.analysis.engine import Unit
from attnviz.distributed import workers_line
from attnviz.errors import AttnvizError

WORK_DIR = ".attnviz-work"
THRESHOLD_PHASES = ("localise", "scorecam")  # the phases whose values depend on the IoU threshold


def run_stamp(info, variants: list[str], config, source) -> str:
    """What a unit's values depend on besides the unit: the set's checkpoints (their sha256), the options that
    change numbers, and the data; units left by a run that differs in any of them are measured again."""
    options = {k: v for k, v in asdict(config).items() if k != "workers"}
    text = json.dumps({"set": info.name, "models": {v: info.models[v].sha256 for v in variants}, "config": options,
                       "data": source.describe(), "kind": source.kind}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write(path: Path, value) -> None:
    """Pickle ``value`` to ``path`` whole or not at all (a worker lost mid-write leaves no half file)."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(part, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(part, path)


def _read(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _worker_class(ray):
    """The actor class, made when Ray is imported (the package imports without Ray)."""

    class AnalysisWorker:
        """One worker: the model set loaded once, measuring units into the work folder."""

        def __init__(self, setup: dict) -> None:
            import torch

            torch.set_num_threads(setup["threads"])
            self.setup, self.ctx = setup, None

        def ready(self) -> dict:
            """Load the set (its error ends the job with the local run's line) and make the run's context."""
            from attnviz.analysis.run import _context
            from attnviz.weights import load_model_set

            s = self.setup
            model_set = load_model_set(s["set"], s["weights_dir"], variants=s["variants"])
            self.ctx = _context(model_set, s["config"], s["variants"], False, s["source"])
            return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

        def process(self, unit: Unit, threshold: float, path: str, inputs: str | None) -> str:
            """Measure ``unit`` and write its values (with the stamp and threshold) to ``path``."""
            from attnviz.analysis.run import run_unit

            self.ctx.threshold = threshold
            part = self.ctx.fresh()
            if inputs is not None:
                faith = _read(Path(inputs))
                part.faith_items, part.faith_maps = faith["items"], faith["maps"]
                part.faith_probability, part.faith_target = faith["probability"], faith["target"]
            run_unit(part, unit)
            values = part.partial()
            values["faith"] = {"maps": {}, "items": {}, "probability": {}, "target": {}} if inputs else values["faith"]
            _write(Path(path), {"stamp": self.setup["stamp"], "threshold": threshold, "values": values})
            return path

    return ray.remote(AnalysisWorker)


class RayEngine:
    """The units on Ray workers, their values kept in the work folder until the report is written."""

    def __init__(self, ray, work: Path, setup: dict, n_workers: int, worker_cpus: int) -> None:
        self.ray, self.work, self.setup = ray, work, setup
        self.n_workers, self.worker_cpus = n_workers, worker_cpus
        self.names: dict = {}  # actor -> "node:pid", over every phase
        self.actors: list = []  # workers kept between phases, so the set loads once per worker
        work.mkdir(parents=True, exist_ok=True)

    def _path(self, unit: Unit) -> Path:
        return self.work / f"{unit.name}.pkl"

    def _finished(self, unit: Unit, threshold: float) -> bool:
        path = self._path(unit)
        if not path.exists():
            return False
        try:
            kept = _read(path)
        except Exception:  # a file from another version, or damaged: measured again
            return False
        same_threshold = unit.phase not in THRESHOLD_PHASES or kept["threshold"] == threshold
        return kept["stamp"] == self.setup["stamp"] and same_threshold

    def _inputs(self, ctx, unit: Unit) -> str | None:
        """The faithfulness scene's maps, probabilities and targets, written for the worker that measures it."""
        if unit.phase != "faithfulness":
            return None
        k = unit.start
        variants = list(ctx.explainers)
        path = self.work / f"input-{unit.name}.pkl"
        _write(path, {"items": {k: ctx.faith_items[k]},
                      "maps": {(k, v): ctx.faith_maps[k, v] for v in variants},
                      "probability": {(k, v): ctx.faith_probability[k, v] for v in variants},
                      "target": {(k, v): ctx.faith_target[k, v] for v in variants}})
        return str(path)

    def run(self, ctx, units: list[Unit], desc: str) -> None:
        from attnviz.distributed import Task, run_tasks

        todo = [u for u in units if not self._finished(u, ctx.threshold)]
        if len(todo) < len(units):
            print(f"{desc}: {len(units) - len(todo)} of {len(units)} units already measured in {self.work}; "
                  f"measuring the other {len(todo)}", file=sys.stderr, flush=True)
        with ctx.bar(sum(u.scenes for u in units), desc) as bar:
            bar.update(sum(u.scenes for u in units) - sum(u.scenes for u in todo))
            tasks = [Task((u, ctx.threshold, str(self._path(u)), self._inputs(ctx, u)), f"unit {u.name}")
                     for u in todo]

            def failed(task: Task) -> None:
                raise AttnvizError(f"the Ray workers measuring {task.label} died {len(task.lost_on)} times "
                                   f"({', '.join(task.lost_on)}); nodes out of memory, or a crash in the worker")

            run_tasks(self.ray, self._new_worker, tasks, self.n_workers, self.worker_cpus,
                      lambda task, value: bar.update(task.payload[0].scenes), failed, self.names, self.actors)
        for unit in units:
            ctx.absorb(_read(self._path(unit))["values"])

    def _new_worker(self):
        worker = _worker_class(self.ray).options(num_cpus=self.worker_cpus, scheduling_strategy="SPREAD",
                                                 max_restarts=0)
        return worker.remote(self.setup)

    def close(self, remove: bool) -> None:
        """Stop the workers; remove the work folder when the report is written."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors.clear()
        if remove:
            shutil.rmtree(self.work, ignore_errors=True)
        print(workers_line(self.names, "measured this analysis"), file=sys.stderr, flush=True)


def ray_setup(info, variants: list[str], config, source, worker_cpus: int, weights_dir: Path) -> dict:
    """What every worker needs to load the set and measure units like the driver (ROAD's imputation inline: the
    cluster's workers are the parallelism)."""
    config = replace(config, workers=0)
    return {"set": info.name, "weights_dir": str(weights_dir), "variants": variants, "config": config,
            "source": source, "threads": worker_cpus, "stamp": run_stamp(info, variants, config, source)}
