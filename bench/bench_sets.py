"""Memory of a process that switches model sets: the loaded sets kept least recently used first out within
their budget (``attnviz.set_cache``), against keeping every set ever loaded, in one run.

    python bench/bench_sets.py [--rounds 3] [--json bench/results/sets.json]

Three random-weight sets at 224 px are registered in a temporary folder: "scenes" (the built-in set's four
models and its 12 classes) and two ImageNet-shaped sets, "imagenet" and "imagenet-2" (ResNet50, +SE, +CBAM
with 1000 classes, the shape of ``weights import imagenet``). Each mode runs in a fresh process of its own
that explains one example scene per request (Grad-CAM at layer4, every model of the set, as the app does):

1. both in use: "scenes" and "imagenet" in turn, 2 x --rounds requests;
2. past the budget: "scenes", "imagenet", "imagenet-2" in turn, 3 x --rounds requests.

Modes: ``budget`` (the default budget, ``attnviz.settings.SET_CACHE_MB``) and ``unbounded`` (the budget set
so high that nothing is ever put out: what attnviz did before). Reported per request: the set, whether it
was loaded for it, the sets kept and their size, and the process's RSS; per phase the RSS after its last
request and the peak. Not to be run while training.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import REPO, RESULTS, example_images, machine_info, peak_rss_mb, rss_mb  # noqa: E402

RESULT_PREFIX = "SETS-RESULT "
MODES = {"budget": None, "unbounded": "1000000"}  # ATTNVIZ_SET_CACHE_MB of each mode (None: the default)


def make_sets(folder: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_model_set

    from attnviz.scenes import CLASSES

    make_model_set(folder, "scenes", classes=list(CLASSES), crop=224)
    imagenet = [f"class {i}" for i in range(1000)]
    for name in ("imagenet", "imagenet-2"):
        make_model_set(folder, name, classes=imagenet, crop=224, variants=("resnet50", "se", "cbam"),
                       make_default=False)


def worker(weights_dir: str, rounds: int) -> dict:
    from attnviz.explainer import EXPLAINERS, get_explainer
    from attnviz.page import release_memory
    from attnviz.set_cache import budget_bytes

    image = str(example_images()[0])
    phases = {"both in use": ["scenes", "imagenet"] * rounds,
              "past the budget": ["scenes", "imagenet", "imagenet-2"] * rounds}
    out: dict = {"budget_mb": budget_bytes() / 2**20, "rss_start_mb": rss_mb(), "phases": {}}
    for phase, order in phases.items():
        steps = []
        for name in order:
            before = len(EXPLAINERS.kept())
            was_kept = any(key[0] == name for key in EXPLAINERS.kept())
            started = time.perf_counter()
            get_explainer(name, weights_dir).explain(image)
            release_memory()  # as the app does after each request
            kept = EXPLAINERS.kept()
            steps.append({"set": name, "loaded": not was_kept, "seconds": time.perf_counter() - started,
                          "kept": [key[0] for key in kept], "kept_mb": sum(kept.values()) / 2**20,
                          "sets_before": before, "rss_mb": rss_mb()})
        out["phases"][phase] = {"steps": steps, "rss_last_mb": steps[-1]["rss_mb"],
                                "rss_max_mb": max(s["rss_mb"] for s in steps),
                                "loads": sum(s["loaded"] for s in steps)}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_mode(mode: str, weights_dir: Path, rounds: int) -> dict:
    env = dict(os.environ)
    env.pop("ATTNVIZ_SET_CACHE_MB", None)
    if MODES[mode] is not None:
        env["ATTNVIZ_SET_CACHE_MB"] = MODES[mode]
    command = [sys.executable, __file__, "--worker", str(weights_dir), "--rounds", str(rounds)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "sets.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args.worker, args.rounds)))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="attnviz-bench-sets-"))
    atexit.register(shutil.rmtree, folder, True)
    make_sets(folder)
    machine = machine_info()
    modes = {mode: run_mode(mode, folder, args.rounds) for mode in MODES}
    summary = {mode: {phase: {k: v for k, v in result.items() if k != "steps"}
                      for phase, result in data["phases"].items()} | {"peak_rss_mb": data["peak_rss_mb"],
                                                                     "budget_mb": data["budget_mb"]}
               for mode, data in modes.items()}
    out = {"benchmark": "bench/bench_sets.py", "machine": machine, "rounds": args.rounds, "modes": modes,
           "summary": summary}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    for mode, s in summary.items():
        print(f"{mode:10} budget {s['budget_mb']:.0f} MB: " + "; ".join(
            f"{phase}: RSS last {s[phase]['rss_last_mb']:.0f} MB, max {s[phase]['rss_max_mb']:.0f} MB, "
            f"{s[phase]['loads']} loads" for phase in ("both in use", "past the budget"))
            + f"; peak {s['peak_rss_mb']:.0f} MB")
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
