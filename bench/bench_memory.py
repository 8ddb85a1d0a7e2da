"""Memory of a process serving the three models: RSS after the first request and peak RSS after 50.

    python bench/bench_memory.py [--requests 50] [--set NAME] [--weights-dir DIR] [--modes handler attnviz ...]
                                 [--json bench/results/memory.json]

Each mode runs in a fresh subprocess of its own, so that no mode's memory
shows up in another's (the baselines included):

* ``handler``     - the app's full handler (attnviz.ui's ``explain`` endpoint function: explain, render, archive);
* ``attnviz``     - ``Explainer.explain`` alone (CAMs, top-k, attention; no rendering);
* ``pgc_default`` - baseline: default pytorch-grad-cam GradCAM on each model, parameters requiring grad;
* ``forward``     - baseline: the three forward passes alone, eval mode, ``torch.no_grad``.

Every request explains one image (cycling through examples/*.png) with
default Grad-CAM at layer4. Reported per mode: RSS after setup (models loaded),
after the first request and after the last, the RSS after every request, and
the process's peak RSS (VmHWM). Targets from the issue: the app process's peak
<= 1.5 GB after 50 requests, and flat over requests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_explain import (  # noqa: E402
    RESULTS,
    example_images,
    exit_on_sigterm,
    find_app_handler,
    generated_images,
    machine_info,
    peak_rss_mb,
    prepare_weights,
    retained_grad_mb,
    rss_mb,
    write_results,
)

MODES = ("handler", "attnviz", "pgc_default", "forward")
PEAK_LIMIT_MB = 1536.0
RESULT_PREFIX = "MEMORY-RESULT "


# --------------------------------------------------------------------------- one mode, in its own process


def _serve(mode: str, set_name: str, weights_dir: str, images: list[Path]):
    """Set up one mode; returns (a function serving one request for an image path, what it serves, its models)."""
    import torch

    from attnviz.explainer import ExplainSettings, get_explainer
    from attnviz.images import load_image, preprocess
    from attnviz.weights import load_model_set

    if mode == "handler":
        get_explainer(set_name, str(Path(weights_dir)))  # loaded once before the requests, as app.py's warm-up does
        handler, note = find_app_handler(set_name, weights_dir)
        if handler is None:
            raise SystemExit(note)
        return lambda path: handler(path, "layer4"), note, []
    if mode == "attnviz":
        explainer = get_explainer(set_name, str(Path(weights_dir)))
        settings = ExplainSettings(top_k=min(5, len(explainer.classes)))
        return lambda path: explainer.explain(path, settings), "Explainer.explain, Grad-CAM, layer4", []

    loaded = load_model_set(set_name, weights_dir)  # a user's models: eval mode, parameters requiring grad
    models = list(loaded.models.values())
    if mode == "forward":

        def forward(path: Path) -> None:
            x = preprocess(load_image(path), loaded.preprocessing).tensor
            with torch.no_grad():
                for model in models:
                    model(x)

        return forward, "three forward passes, eval, no_grad", models

    from pytorch_grad_cam import GradCAM

    def pgc(path: Path) -> None:
        x = preprocess(load_image(path), loaded.preprocessing).tensor
        for model in models:
            with GradCAM(model, target_layers=[model.layer4]) as cam:
                cam(x, targets=None)

    return pgc, "default pytorch-grad-cam GradCAM(model, [model.layer4]), targets=None, per model", models


def worker(mode: str, set_name: str, weights_dir: str, requests: int) -> dict:
    """Serve ``requests`` requests in this process and measure its memory."""
    rss_start = rss_mb()
    images = example_images() or generated_images(8)
    serve, description, models = _serve(mode, set_name, weights_dir, images)
    rss_setup = rss_mb()
    series, seconds = [], []
    for i in range(requests):
        began = time.perf_counter()
        serve(images[i % len(images)])
        seconds.append(time.perf_counter() - began)
        series.append(rss_mb())
    out = {
        "mode": mode,
        "serves": description,
        "requests": requests,
        "rss_at_start_mb": rss_start,
        "rss_after_setup_mb": rss_setup,
        "rss_after_first_mb": series[0],
        "rss_after_last_mb": series[-1],
        "peak_rss_mb": peak_rss_mb(),
        "growth_first_to_last_mb": round(series[-1] - series[0], 1),
        "rss_per_request_mb": series,
        "median_request_ms": round(float(np.median(seconds)) * 1000, 1),
    }
    if len(series) >= 4:  # the slope over the second half, after any warm-up growth
        half = series[len(series) // 2:]
        out["slope_second_half_mb_per_request"] = round(float(np.polyfit(np.arange(len(half)), half, 1)[0]), 3)
    if mode == "pgc_default":
        out["retained_param_grads_mb"] = retained_grad_mb(models)
    return out


def run_mode(mode: str, args: argparse.Namespace, set_name: str, weights_dir: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--requests", str(args.requests),
               "--set", set_name, "--weights-dir", str(weights_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"timed out after {args.timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {"mode": mode, "error": f"exit {done.returncode}: " + " | ".join(tail)}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="requests per mode (default 50)")
    parser.add_argument("--set", dest="set_name", help="model set name (default: the manifest's default set)")
    parser.add_argument("--weights-dir", help="weights folder holding manifest.json (default: weights/)")
    parser.add_argument("--random", action="store_true", help="random-weight models even if a set exists")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--flat-tolerance-mb", type=float, default=50.0,
                        help="largest RSS growth from the first to the last request still called flat (default 50)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per mode's process")
    parser.add_argument("--json", default=str(RESULTS / "memory.json"), help="where to write the results")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")

    if args.worker:
        result = worker(args.worker, args.set_name, args.weights_dir, args.requests)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    exit_on_sigterm()
    set_name, weights_dir, set_note = prepare_weights(args.set_name, args.weights_dir, args.random)
    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, torch {machine['torch']}")
    print(f"models: {set_note}\n{args.requests} requests per mode, each mode in its own process")
    results = {}
    for mode in args.modes:
        results[mode] = run_mode(mode, args, set_name, weights_dir)
        r = results[mode]
        if "error" in r:
            print(f"{mode:12} failed: {r['error']}")
            continue
        print(f"{mode:12} setup {r['rss_after_setup_mb']:7.1f} MB  first {r['rss_after_first_mb']:7.1f}  "
              f"last {r['rss_after_last_mb']:7.1f}  peak {r['peak_rss_mb']:7.1f}  growth "
              f"{r['growth_first_to_last_mb']:+6.1f} MB  ({r['median_request_ms']:.0f} ms/request)")

    targets = {}
    for mode in ("handler", "attnviz"):
        r = results.get(mode, {})
        if "peak_rss_mb" not in r:
            continue
        targets[f"{mode}: peak RSS <= {PEAK_LIMIT_MB:.0f} MB after {args.requests} requests"] = {
            "value": r["peak_rss_mb"], "met": r["peak_rss_mb"] <= PEAK_LIMIT_MB}
        targets[f"{mode}: flat (growth first -> last <= {args.flat_tolerance_mb:.0f} MB)"] = {
            "value": r["growth_first_to_last_mb"], "met": r["growth_first_to_last_mb"] <= args.flat_tolerance_mb}
    for name, t in targets.items():
        print(f"target {name}: {t['value']} {'met' if t['met'] else 'MISSED'}")
    out = {
        "benchmark": "bench/bench_memory.py",
        "machine": machine,
        "config": {"requests": args.requests, "set": set_name, "method": "gradcam", "layer": "layer4",
                   "flat_tolerance_mb": args.flat_tolerance_mb},
        "notes": [set_note, "RSS from /proc/<pid>/status (VmRSS, peak VmHWM), in MiB; one process per mode"],
        "modes": results,
        "targets": targets,
    }
    write_results(args.json, out)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.exit(main())
