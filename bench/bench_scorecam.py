"""Score-CAM's time and memory: attnviz's own batched loop against pytorch-grad-cam's ScoreCAM, in one run.

    python bench/bench_scorecam.py [--variant resnet50] [--set builtin] [--batch 4] [--rounds 2]
                                   [--json bench/results/scorecam.json]

Each measurement runs in a fresh subprocess (so that no mode's memory shows up in another's), on one 224 px
example scene with the set's model at layer4, explaining its top-1 class:

* ``forward``  - the baseline: the model loaded and one forward pass (eval, no_grad);
* ``pgc``      - pytorch-grad-cam's ScoreCAM, default use (its ``batch_size`` set to --batch);
* ``attnviz``  - ``ModelExplainer.explain`` with method ``scorecam`` (one pass, then Score-CAM's masked copies
  --batch at a time).

Reported per mode: the process's peak RSS (VmHWM) and that peak minus the forward baseline's, the time of the
Score-CAM call, and for attnviz the largest difference of its map from pytorch-grad-cam's (<= 1e-4). The modes
alternate over --rounds; the medians are reported. Not to be run while training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import RESULTS, bench_image, machine_info  # noqa: E402

from attnviz.settings import SCORE_CAM_BATCH  # noqa: E402

MODES = ("forward", "pgc", "attnviz")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(mode: str, variant: str, set_name: str, image: str, batch: int, maps_file: str) -> dict:
    import numpy as np
    import torch

    from attnviz.explainer import ExplainSettings, ModelExplainer
    from attnviz.images import load_image, preprocess
    from attnviz.weights import load_model_set

    model_set = load_model_set(set_name, variants=[variant])
    x = preprocess(load_image(image), model_set.preprocessing).tensor
    model = model_set.models[variant].eval()
    with torch.no_grad():
        target = int(model(x).argmax(1)[0])
    out = {"mode": mode, "target": target}
    started = time.perf_counter()
    if mode == "pgc":
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with ScoreCAM(model, target_layers=[model.layer4]) as cam:
            cam.batch_size = batch
            heatmap = cam(x, targets=[ClassifierOutputTarget(target)])[0]
        np.save(maps_file, heatmap)
    elif mode == "attnviz":
        explainer = ModelExplainer(variant, model, model_set.classes)
        settings = ExplainSettings(method="scorecam", target=target, score_cam_batch=batch, time_limit=None)
        heatmap = explainer.explain(x, settings).heatmap
        reference = np.load(maps_file) if Path(maps_file).exists() else None
        out["max_difference_from_pgc"] = None if reference is None else float(np.abs(heatmap - reference).max())
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run(mode: str, args: argparse.Namespace, maps_file: Path) -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--variant", args.variant, "--set", args.set,
               "--image", str(args.image), "--batch", str(args.batch), "--maps-file", str(maps_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="resnet50")
    parser.add_argument("--set", default="builtin")
    parser.add_argument("--image", help="the image (default: the first single-object example scene)")
    parser.add_argument("--batch", type=int, default=SCORE_CAM_BATCH,
                        help=f"masked copies per forward pass (default {SCORE_CAM_BATCH}, the app's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--json", type=Path, default=RESULTS / "scorecam.json")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--maps-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.variant, args.set, args.image, args.batch, args.maps_file)))
        return 0
    args.image = bench_image(args.image)
    maps_file = args.json.with_suffix(".pgc_map.npy")
    found: dict[str, list[dict]] = {mode: [] for mode in MODES}
    try:
        for round_ in range(args.rounds):
            for mode in MODES:  # pgc before attnviz in every round: attnviz's map is compared with this round's
                found[mode].append(run(mode, args, maps_file))
                print(f"round {round_ + 1}: {mode}: {found[mode][-1]}", file=sys.stderr, flush=True)
    finally:
        maps_file.unlink(missing_ok=True)
    forward = statistics.median(r["peak_rss_mb"] for r in found["forward"])
    summary = {}
    for mode in ("pgc", "attnviz"):
        peak = statistics.median(r["peak_rss_mb"] for r in found[mode])
        summary[mode] = {"seconds_median": statistics.median(r["seconds"] for r in found[mode]),
                         "peak_rss_mb_median": peak, "peak_over_forward_mb": peak - forward}
    summary["attnviz"]["max_difference_from_pgc"] = max(r["max_difference_from_pgc"] for r in found["attnviz"])
    summary["attnviz_over_pgc_time"] = summary["attnviz"]["seconds_median"] / summary["pgc"]["seconds_median"]
    over = summary["attnviz"]["peak_over_forward_mb"]
    summary["targets"] = {
        "attnviz: peak <= forward + 200 MB": {"value": round(over, 1), "limit": "<= 200", "met": over <= 200},
        "attnviz: no slower than pytorch-grad-cam": {"value": round(summary["attnviz_over_pgc_time"], 3),
                                                     "limit": "<= 1.0", "met": summary["attnviz_over_pgc_time"] <= 1.0},
        "maps equal pytorch-grad-cam's (<= 1e-4)": {"value": summary["attnviz"]["max_difference_from_pgc"],
                                                    "limit": "<= 0.0001",
                                                    "met": summary["attnviz"]["max_difference_from_pgc"] <= 1e-4},
    }
    result = {"command": "python bench/bench_scorecam.py " + " ".join(argv or sys.argv[1:]),
              "variant": args.variant, "set": args.set, "image": Path(args.image).name, "batch": args.batch,
              "rounds": args.rounds, "forward_peak_rss_mb_median": forward, "summary": summary, "runs": found,
              "machine": machine_info()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
