"""Images per second of ``attnviz explain``: the local run against Ray with one worker and with two.

    python bench/bench_ray.py [--images 48] [--repeats 2] [--set NAME | --random] [--batch-size 8]
                              [--json bench/results/ray.json]

Each run is the real command (``attnviz explain IMAGES --out TMP --force``) in a subprocess, on ``--images``
generated test scenes; the benchmark timestamps every line it prints (one per finished image). Per run:
the wall time, the time to the first finished image (start-up: Python, a Ray instance, workers loading the
set, the first batch) and the steady rate, from the end of the first batch to the last image. The
machine's cores are given out the
same way in every configuration: the local run uses torch's threads (all cores), ``ray x1`` one worker with
every core (``--worker-cpus N``), ``ray x2`` two workers with half each. Ray's overhead per image is ray x1's
steady seconds per image minus the local run's (same threads, same batches). The configurations run
round-robin ``--repeats`` times; medians are reported. Ray's local instance starts and stops in every Ray
run, as it does for a user without ``--address``. Run it on an idle machine (never beside training).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import (  # noqa: E402
    RESULTS,
    exit_on_sigterm,
    generated_images,
    machine_info,
    prepare_weights,
    write_results,
)

ATTNVIZ = Path(sys.executable).parent / "attnviz"


def configurations(cores: int) -> dict[str, list[str]]:
    half = max(1, cores // 2)
    return {
        "local": [],
        "ray x1": ["--engine", "ray", "--workers", "1", "--worker-cpus", str(cores)],
        "ray x2": ["--engine", "ray", "--workers", "2", "--worker-cpus", str(half)],
    }


def timed_run(images: list[Path], extra: list[str], set_name: str, weights_dir: Path, batch_size: int) -> dict:
    """One run of the command; wall time, time to the first finished image and the steady rate."""
    out = Path(tempfile.mkdtemp(prefix="attnviz-bench-ray-"))
    command = [str(ATTNVIZ), "explain", *map(str, images), "--out", str(out), "--force", "--set", set_name,
               "--weights-dir", str(weights_dir), "--batch-size", str(batch_size), *extra]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stamps = []
    for line in process.stdout:
        if line.startswith(("done ", "failed ")):
            stamps.append(time.perf_counter() - began)
    error = process.stderr.read()
    process.wait()
    wall = time.perf_counter() - began
    shutil.rmtree(out, ignore_errors=True)
    if process.returncode != 0 or len(stamps) != len(images):
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{error[-2000:]}")
    # lines come a batch at a time: the steady rate runs from the end of the first batch to the last line
    first = min(batch_size, len(stamps) - 1)
    steady = (stamps[-1] - stamps[first - 1]) / max(1, len(stamps) - first)
    return {"wall_s": round(wall, 2), "first_image_s": round(stamps[0], 2), "steady_s_per_image": round(steady, 4),
            "steady_images_per_s": round(1 / steady, 3) if steady else None,
            "end_to_end_images_per_s": round(len(images) / wall, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="generated test scenes (default 48)")
    parser.add_argument("--repeats", type=int, default=2, help="round-robin repetitions (default 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", dest="set_name")
    parser.add_argument("--weights-dir")
    parser.add_argument("--random", action="store_true", help="random-weight models, whatever is installed")
    parser.add_argument("--json", default=str(RESULTS / "ray.json"))
    args = parser.parse_args(argv)
    exit_on_sigterm()
    set_name, weights_dir, note = prepare_weights(args.set_name, args.weights_dir, args.random)
    images = generated_images(args.images)
    cores = len(os.sched_getaffinity(0))
    configs = configurations(cores)
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for repeat in range(args.repeats):
        names = list(configs)
        names = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in names:
            result = timed_run(images, configs[name], set_name, weights_dir, args.batch_size)
            runs[name].append(result)
            print(f"{name:7s} wall {result['wall_s']:7.1f} s, first image {result['first_image_s']:6.1f} s, "
                  f"steady {result['steady_images_per_s']} images/s", flush=True)
    summary = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for name, results in runs.items()}
    overhead = summary["ray x1"]["steady_s_per_image"] - summary["local"]["steady_s_per_image"]
    out = {"machine": {**machine_info(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
           "weights": note, "images": args.images, "batch_size": args.batch_size, "cores": cores,
           "configurations": {name: " ".join(extra) or "(local)" for name, extra in configs.items()},
           "runs": runs, "median": summary, "ray_overhead_s_per_image": round(overhead, 4)}
    print(f"\n{'':8s}{'wall s':>8s}{'first s':>9s}{'steady img/s':>14s}{'end-to-end img/s':>18s}")
    for name, row in summary.items():
        print(f"{name:8s}{row['wall_s']:8.1f}{row['first_image_s']:9.1f}{row['steady_images_per_s']:14.3f}"
              f"{row['end_to_end_images_per_s']:18.3f}")
    print(f"Ray's overhead per image (ray x1 - local, steady): {overhead * 1000:.1f} ms")
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
