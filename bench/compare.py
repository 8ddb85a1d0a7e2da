"""Before/after: this checkout against an earlier commit, in one run, on the same weights and image.

    python bench/compare.py                         # against main's previous commit (HEAD~1), 21 runs
    python bench/compare.py --base 1915922 --runs 21 --set builtin --json bench/results/compare.json

The base commit is checked out in a git worktree (a temporary folder, removed at the end). Each side runs in
a process of its own (``bench/compare_worker.py`` with that side's ``attnviz`` first on ``sys.path``), loads
the model set once, warms up, and then times one task per request from this script. Every repetition runs
every task once on both sides, in an order that rotates by one task each repetition, and the side that goes
first alternates, so machine noise hits both alike. Only one side computes at a time.

Tasks, per model of the set: ``forward`` (the model in eval mode under ``torch.no_grad``), ``explain``
(``ModelExplainer.explain`` with the default settings: Grad-CAM at layer4, top-5, attention records) and
``handler`` (the app's endpoint handler ``AttnvizApp.explain_api`` for that model alone, with the UI's
defaults: explain, draw every figure, write the PNGs). The report is the new/old ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "bench" / "compare_worker.py"
TASKS = ("forward", "explain", "handler")


class Side:
    """One version of attnviz in a process of its own, answering one timed task per line."""

    def __init__(self, name: str, tree: Path, set_name: str, weights_dir: Path, image: Path) -> None:
        self.name = name
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONDONTWRITEBYTECODE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), "--tree", str(tree), "--set", set_name, "--weights-dir", str(weights_dir),
             "--image", str(image)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        hello = json.loads(self._line())
        self.variants: list[str] = hello["variants"]
        self.revision: str = hello["revision"]

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker stopped (exit code {self.process.wait()})")
        return line

    def time(self, task: str, variant: str) -> float:
        self.process.stdin.write(f"{task} {variant}\n")
        self.process.stdin.flush()
        return float(json.loads(self._line())["seconds"])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def _worktree(base: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="attnviz-base-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), base], check=True,
                   capture_output=True, text=True)
    return folder


def _remove_worktree(folder: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def measure(sides: dict[str, Side], variants: list[str], runs: int, warmup: int) -> dict:
    """Seconds per (side, task, variant) and repetition, round-robin over tasks, alternating the side first."""
    jobs = [(task, variant) for task in TASKS for variant in variants]
    names = list(sides)
    for _ in range(warmup):
        for task, variant in jobs:
            for name in names:
                sides[name].time(task, variant)
    times: dict = {name: {f"{t}:{v}": [] for t, v in jobs} for name in names}
    for rep in range(runs):
        start = rep % len(jobs)
        for k, (task, variant) in enumerate(jobs[start:] + jobs[:start]):
            order = names if (rep + k) % 2 == 0 else names[::-1]
            for name in order:
                times[name][f"{task}:{variant}"].append(sides[name].time(task, variant))
    return times


def summarise(times: dict, variants: list[str]) -> dict:
    out: dict = {}
    for variant in variants:
        out[variant] = {}
        for task in TASKS:
            old = float(np.median(times["old"][f"{task}:{variant}"]))
            new = float(np.median(times["new"][f"{task}:{variant}"]))
            out[variant][task] = {"old_median_ms": round(old * 1000, 2), "new_median_ms": round(new * 1000, 2),
                                  "new_over_old": round(new / old, 3)}
    return out


def markdown(result: dict) -> str:
    lines = [f"new {result['new']} against old {result['old']}, {result['runs']} runs each, median ms (new / old)",
             "", "| model | forward | explain | handler |", "|---|---|---|---|"]
    for variant, row in result["ratios"].items():
        cells = [f"{row[t]['old_median_ms']:.0f} → {row[t]['new_median_ms']:.0f} ({row[t]['new_over_old']:.3f}x)"
                 for t in TASKS]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time this checkout against an earlier commit, round-robin.")
    parser.add_argument("--base", default="HEAD~1", help="the earlier commit (default: HEAD~1)")
    parser.add_argument("--runs", type=int, default=21, help="timed repetitions per task and side (21)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (2)")
    parser.add_argument("--set", dest="set_name", default="builtin", help="model set (builtin)")
    parser.add_argument("--weights-dir", type=Path, default=REPO / "weights", help="weights folder, both sides")
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "scene_00_cat.png")
    parser.add_argument("--json", type=Path, help="write the result here (e.g. bench/results/compare.json)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    base = _worktree(args.base)
    sides: dict[str, Side] = {}
    started = time.perf_counter()
    try:
        sides["old"] = Side("old", base, args.set_name, args.weights_dir.resolve(), args.image.resolve())
        sides["new"] = Side("new", REPO, args.set_name, args.weights_dir.resolve(), args.image.resolve())
        variants = [v for v in sides["new"].variants if v in sides["old"].variants]
        load = os.getloadavg()
        times = measure(sides, variants, args.runs, args.warmup)
    finally:
        for side in sides.values():
            side.close()
        _remove_worktree(base)
    result = {"old": sides["old"].revision, "new": sides["new"].revision, "runs": args.runs,
              "set": args.set_name, "image": args.image.name, "load_average_at_start": [round(x, 2) for x in load],
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
              "seconds": round(time.perf_counter() - started, 1), "ratios": summarise(times, variants),
              "samples_ms": {side: {k: [round(s * 1000, 2) for s in v] for k, v in t.items()}
                             for side, t in times.items()}}
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
