"""``attnviz explain --engine ray``: the batch explain path on a Ray cluster.

The driver (the ``attnviz`` command) finds the images and checks the settings as the local run does, then starts one
actor per worker (``ExplainWorker``, ``--worker-cpus`` CPUs each, torch threads set to them, and a GPU each when the
cluster has GPUs: its models then run there). Each actor loads the model set once and, for every batch it is given,
does what the local loop does for a batch: hashes the files, skips those finished with these settings, explains the
rest in one pass per model and writes each image's folder into ``--out`` itself (``attnviz.batch.process_batch``),
so maps never travel through Ray's object store; only each image's status, reason and file hash come back. The
driver keeps one batch in flight per actor, prints one line per image and draws the progress bar as the local run
does, and writes the same report. A batch whose actor dies (its process or its node lost) is queued again for the
other actors and a replacement actor is asked for; a batch that has lost its actor ``MAX_ATTEMPTS`` times is failed,
image by image, with that reason.

Every path is made absolute on the driver: workers start in other folders, and on a real cluster the images,
``--out`` and the weights folder must be at the same path on every node (a shared file system).

Without ``--address`` a local Ray instance is started on 127.0.0.1 (no dashboard, no usage statistics) and
stopped at the end; with it, an existing cluster is joined (``auto`` for the one ``ray start`` made here).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from attnviz.batch import ImageJob, Reporter, Run, UsageError, prepare_run
from attnviz.errors import AttnvizError

INSTALL_HINT = "pip install 'attnviz[ray]' (in a checkout: .venv/bin/pip install -e '.[ray]')"
MAX_ATTEMPTS = 3  # a batch whose actor died this many times fails instead of killing a fourth
START_TIMEOUT_S = 600.0  # how long the job waits for a first (or, with none left, a new) worker


def add_engine_arguments(parser: argparse.ArgumentParser, engine_help: str, workers: str = "--workers",
                         gpus: bool = False) -> None:
    """--engine, --address, the workers option (``workers``: its name), --worker-cpus and, with ``gpus``,
    --worker-gpus, for a command that runs locally or on Ray."""
    engine = parser.add_argument_group("engine")
    engine.add_argument("--engine", choices=("local", "ray"), default="local", help=engine_help)
    engine.add_argument("--address", metavar="ADDR",
                        help="with --engine ray: the cluster to join (host:port, or auto); default: a local Ray "
                             "instance on 127.0.0.1, stopped at the end")
    engine.add_argument(workers, type=int, metavar="N",
                        help="with --engine ray: workers, each loading the set once (default: as many as the "
                             "cluster's CPUs hold)")
    engine.add_argument("--worker-cpus", type=int, default=1, metavar="N",
                        help="with --engine ray: CPUs (and torch threads) per worker (1)")
    if gpus:
        engine.add_argument("--worker-gpus", type=int, choices=(0, 1), metavar="N",
                            help="with --engine ray: 1: each worker takes a GPU and runs its models there; 0: "
                                 "workers use CPUs only (default: 1 when the cluster has GPUs, else 0)")


def engine_problem(args: argparse.Namespace, workers: str = "--workers") -> str | None:
    """What is wrong with the engine options, in one line; None when they go together."""
    count = getattr(args, workers.lstrip("-").replace("-", "_"))
    if args.engine != "ray":
        gpus = getattr(args, "worker_gpus", None)
        given = [name for name, value in (("--address", args.address), (workers, count),
                                          ("--worker-gpus", gpus is not None)) if value]
        if given or args.worker_cpus != 1:
            return f"{(given or ['--worker-cpus'])[0]} needs --engine ray"
    elif (count is not None and count < 1) or args.worker_cpus < 1:
        return f"{workers} and --worker-cpus must be at least 1"
    return None


def import_ray(address: str | None):
    """Ray, imported so that it stays on loopback when the cluster is this machine's; one line if it is missing."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None or is_loopback(address):
        # Read when ray is imported: without it Ray swaps 127.0.0.1 (the driver's own address and the cluster's)
        # for this machine's outward address, and its servers would listen beyond loopback.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        raise UsageError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def is_loopback(address: str) -> bool:
    """``host:port`` (or ``ray://host:port``) names this machine by a loopback address."""
    from attnviz.get_imagenet import is_loopback_host

    return is_loopback_host(address.split("://", 1)[-1].rsplit(":", 1)[0])


@contextlib.contextmanager
def ray_session(address: str | None):
    """Connected to the cluster at ``address`` (None: a local instance on 127.0.0.1, stopped at the end)."""
    ray = import_ray(address)
    options = {"log_to_driver": False, "configure_logging": False}
    try:
        if address is None:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, **options)
        elif is_loopback(address):
            ray.init(address=address, _node_ip_address="127.0.0.1", **options)
        else:
            ray.init(address=address, **options)
    except ConnectionError as exc:
        raise AttnvizError(f"cannot join the Ray cluster at {address}: {' '.join(str(exc).split())}; start it "
                           f"(ray start --head) or check --address") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _worker_class(ray):
    """The actor class, made when Ray is imported (the package imports without Ray)."""

    class ExplainWorker:
        """One worker: the run's model set, loaded once; explains and writes batches of images."""

        def __init__(self, args: argparse.Namespace) -> None:
            import torch

            torch.set_num_threads(args.worker_cpus)
            self.args, self.run = args, None

        def ready(self) -> dict:
            """Load the set (its error, raised here and not in the constructor, ends the job as in the local
            run); where this worker runs."""
            self.run = prepare_run(self.args)
            self.run.invocation = self.args.invocation  # the driver's: results of a lost worker count as done
            self.run.device, note = worker_device(ray)
            self.run.explainer()
            return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "device": self.run.device,
                    "note": note}

        def process(self, jobs: list[ImageJob], force: bool) -> list[tuple[str, str, str]]:
            """Check, explain and write ``jobs``; each one's (status, reason, sha256)."""
            from attnviz.batch import explain_group

            explain_group(jobs, self.run, self.args.out, force)
            return [(job.status, job.reason, job.sha256) for job in jobs]

    return ray.remote(ExplainWorker)


@dataclass
class Task:
    """One piece of a job for a worker: the arguments of its ``process`` call, and the workers it was lost on."""

    payload: tuple
    label: str  # for messages, e.g. "its 4 images"
    lost_on: list[str] = field(default_factory=list)


def absolute_args(args: argparse.Namespace) -> argparse.Namespace:
    """The run's arguments with every path absolute, as the workers need them."""
    from attnviz.weights import default_weights_dir

    absolute = argparse.Namespace(**vars(args))
    absolute.weights_dir = Path(args.weights_dir or default_weights_dir()).resolve()
    absolute.out = Path(args.out).resolve()
    absolute.paths = [Path(p).resolve() for p in args.paths]
    return absolute


def cluster_plan(ray, workers: int | None, worker_cpus: int, worker_gpus: int | None = 0) -> tuple[int, int]:
    """How many actors and GPUs each (``worker_gpus`` None: one when the cluster has GPUs): as asked, else as
    many as the cluster's CPUs (and GPUs) hold; refused when one cannot fit, or when workers asked for would
    wait for a GPU that never comes."""
    resources = ray.cluster_resources()
    total, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if worker_cpus > total:
        raise UsageError(f"--worker-cpus {worker_cpus} is more than the cluster's {total} CPUs; ask for fewer")
    per_worker = (1 if gpus else 0) if worker_gpus is None else worker_gpus
    if per_worker and not gpus:
        raise UsageError("--worker-gpus 1, but the cluster has no GPUs; leave the option out, or give 0")
    if per_worker and workers and workers > gpus:
        raise UsageError(f"{workers} workers with a GPU each need {workers} GPUs and the cluster has {gpus}; ask "
                         f"for at most {gpus} workers, or --worker-gpus 0 for workers on CPUs only")
    planned = workers or max(1, total // worker_cpus)
    return (min(planned, gpus) if per_worker and not workers else planned), per_worker


def worker_device(ray) -> tuple[str, str | None]:
    """Where a worker's models run: "cuda" when Ray gave it a GPU (Ray sets CUDA_VISIBLE_DEVICES to it) that
    torch can use, else "cpu"; with a line for the driver to print when the GPU was given but torch finds no CUDA
    device (a worker's own output reaches the driver late, or not before it ends)."""
    import torch

    ids = ray.get_gpu_ids()
    if not ids:
        return "cpu", None
    if torch.cuda.is_available():
        return "cuda", None
    return "cpu", (f"Ray gave it GPU {', '.join(map(str, ids))}, but its torch finds no CUDA device (a CPU-only "
                   f"build, or no driver); its models run on the CPU")


def explain_on_ray(jobs: list[ImageJob], run: Run, args: argparse.Namespace, out_dir: Path, force: bool) -> bool:
    """Explain every job on Ray workers with one line per image on stdout; True when interrupted. ``run`` is
    the driver's check of the settings (its batch size is the workers')."""
    ray_args = absolute_args(args)
    ray_args.invocation = run.invocation
    for job in jobs:
        job.path = Path(job.path).resolve()
    stdout = sys.stdout
    # Ray's driver prints cluster events ("(raylet) The node ... has been marked dead") to stdout: they go to
    # stderr, so that stdout stays one line per image, as in the local run.
    with contextlib.redirect_stdout(sys.stderr), ray_session(args.address) as ray:
        n_workers, ray_args.worker_gpus = cluster_plan(ray, args.workers, args.worker_cpus, args.worker_gpus)
        report = Reporter(len(jobs), out_dir, f"explaining ({n_workers} Ray workers)", stream=stdout)
        try:
            return _dispatch(ray, jobs, ray_args, run.batch_size, force, n_workers, report)
        except KeyboardInterrupt:
            return True
        finally:
            report.close()


def _dispatch(ray, jobs: list[ImageJob], ray_args: argparse.Namespace, batch_size: int, force: bool,
              n_workers: int, report: Reporter) -> bool:
    """Batches of ``batch_size`` images to the workers; each image's outcome to the report as it comes."""
    worker = _worker_class(ray).options(num_cpus=ray_args.worker_cpus, num_gpus=ray_args.worker_gpus,
                                        scheduling_strategy="SPREAD", max_restarts=0)
    tasks = [Task((jobs[i : i + batch_size], force), _images_label(len(jobs[i : i + batch_size])))
             for i in range(0, len(jobs), batch_size)]

    def done(task: Task, outcomes: list) -> None:
        for job, (status, reason, sha256) in zip(task.payload[0], outcomes, strict=True):
            job.status, job.reason, job.sha256 = status, reason, sha256
            report.finished(job)

    def failed(task: Task) -> None:
        for job in task.payload[0]:
            job.status = "failed"
            job.reason = (f"the Ray worker explaining it died {MAX_ATTEMPTS} times ({', '.join(task.lost_on)}); "
                          f"a file that crashes the process, or nodes out of memory")
            report.finished(job)

    names: dict = {}
    pool: list = []
    try:
        run_tasks(ray, lambda: worker.remote(ray_args), tasks, n_workers, ray_args.worker_cpus, done, failed,
                  names, pool)
    finally:
        for actor in pool:
            ray.kill(actor)
    print(workers_line(names, "explained these images"), file=sys.stderr, flush=True)
    return False


def workers_line(names: dict, what: str) -> str:
    """"Ray: 2 workers on 2 nodes <what>" from the ready workers' "node:pid" names."""
    nodes = {name.split(":")[0] for name in names.values()}
    return (f"Ray: {len(names)} worker{'s' if len(names) != 1 else ''} on {len(nodes)} node"
            f"{'s' if len(nodes) != 1 else ''} {what}")


def run_tasks(ray, new_worker, tasks: list[Task], n_workers: int, worker_cpus: int, done, failed, names: dict,
              pool: list) -> None:
    """Every task through ``process`` of ``n_workers`` actors, one task in flight per actor; ``done(task, value)``
    as each returns. ``new_worker()`` makes an actor (its ``ready()`` loads what it needs; an error there ends the
    job with that error). A task whose actor dies (its process or node lost) goes to another actor and a
    replacement is asked for; one lost ``MAX_ATTEMPTS`` times goes to ``failed(task)``. ``pool``: ready actors,
    used first and left there for the caller's next call (the caller kills them); ``names``: actor -> "node:pid"
    of every actor that became ready."""
    queue = deque(tasks)
    if not queue:
        return  # nothing left to do (a resumed run): no worker is started to load the set for nothing
    state = _Workers(ray, new_worker, names, list(pool))
    for _ in range(n_workers - len(state.idle)):
        state.start()
    try:
        while queue or state.running:
            while state.idle and queue:
                actor, task = state.idle.pop(), queue.popleft()
                state.running[actor.process.remote(*task.payload)] = (actor, task)
            if not state.running and not state.starting:
                state.start()  # every worker is gone: ask for a new one
            ref = state.next_ready(worker_cpus)
            if ref is None or ref in state.starting and state.became_ready(ref):
                continue
            actor, task = state.running.pop(ref)
            value = state.value(ref)
            if value is _LOST:
                _lost(task, names.get(actor, "a worker"), queue, failed)
                state.start()
                continue
            done(task, value)
            state.idle.append(actor)
    finally:
        pool[:] = state.idle
        for actor in [*state.starting.values(), *(a for a, _ in state.running.values())]:
            ray.kill(actor)


_LOST = object()  # what a task's value is when its worker died


class _Workers:
    """The actors of ``run_tasks``: starting (ready() in flight), idle, and running (one task each)."""

    def __init__(self, ray, new_worker, names: dict, idle: list) -> None:
        self.ray, self.new_worker, self.names, self.idle = ray, new_worker, names, idle
        self.starting: dict = {}  # ready() ref -> actor
        self.running: dict = {}  # process() ref -> (actor, task)
        self.waiting_since = time.monotonic()

    def start(self) -> None:
        actor = self.new_worker()
        self.starting[actor.ready.remote()] = actor

    def next_ready(self, worker_cpus: int):
        """The next finished ready() or process() call; None after 5 s without one (an error when no worker has
        started for START_TIMEOUT_S)."""
        ready, _ = self.ray.wait(list(self.starting) + list(self.running), num_returns=1, timeout=5.0)
        if ready:
            return ready[0]
        if not self.running and time.monotonic() - self.waiting_since > START_TIMEOUT_S:
            raise AttnvizError(f"no Ray worker started in {START_TIMEOUT_S:.0f} s: the cluster has no "
                               f"{worker_cpus} free CPUs for one; free some or lower --worker-cpus")
        return None

    def became_ready(self, ref) -> bool:
        """A worker has loaded what it needs (then idle), failed to (the job ends with its error), or died
        starting (a new one is asked for). True: ``ref`` was handled."""
        from ray.exceptions import RayActorError, RayTaskError

        actor = self.starting.pop(ref)
        try:
            where = self.ray.get(ref)
        except RayTaskError as exc:
            raise _unwrap(exc) from None  # the set cannot load: the same error as the local run
        except RayActorError:  # died while starting (its node lost): ask for another
            print("a Ray worker was lost while starting; asking for another", file=sys.stderr, flush=True)
            self.start()
            return True
        self.names[actor] = f"{where['node'][:8]}:{where['pid']}"
        on_gpu = ", its models on the GPU" if where.get("device", "cpu") != "cpu" else ""
        note = f"; {where['note']}" if where.get("note") else ""
        print(f"Ray worker {self.names[actor]} (node:pid) ready{on_gpu}{note}", file=sys.stderr, flush=True)
        self.idle.append(actor)
        return True

    def value(self, ref):
        """A finished task's value; ``_LOST`` when its worker died."""
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return self.ray.get(ref)
        except RayActorError:
            self.waiting_since = time.monotonic()
            return _LOST
        except RayTaskError as exc:
            raise _unwrap(exc) from None


def _unwrap(exc) -> Exception:
    """attnviz's own error raised in a worker, as the local run raises it; any other error as Ray gives it."""
    return exc.cause if isinstance(exc.cause, AttnvizError | UsageError) else exc


def _images_label(count: int) -> str:
    return f"its {count} image{'s' if count != 1 else ''}"


def _lost(task: Task, worker: str, queue: deque, failed) -> None:
    """A task whose worker died: queued again, or given to ``failed`` after MAX_ATTEMPTS."""
    task.lost_on.append(worker)
    if len(task.lost_on) < MAX_ATTEMPTS:
        queue.append(task)
        print(f"Ray worker {worker} lost; another worker takes {task.label}", file=sys.stderr, flush=True)
        return
    failed(task)
