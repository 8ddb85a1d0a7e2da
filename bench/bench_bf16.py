"""How much bf16 inference changes the heatmaps, and how much time it saves, per model.

    python bench/bench_bf16.py [--runs 21] [--set NAME] [--weights-dir DIR] [--layer layer4] [--images N]
                               [--json bench/results/bf16.json]

For every model and image (examples/*.png, else generated test scenes) it
explains the image in float32 and again with ``ExplainSettings(precision="bf16")``
(the image's pass under CPU bfloat16 autocast), the bf16 map explaining the
float32 run's class, and compares the two maps (both in [0, 1]): max and mean
absolute difference and the IoU of their top-20 % regions; also whether the
top-1 class and the probabilities change. Then it times both precisions on the
first image, interleaved round-robin. bf16 is fast only on CPUs that compute it
natively (AVX512-BF16 or AMX); the JSON records whether this one does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_explain import (  # noqa: E402
    RESULTS,
    example_images,
    exit_on_sigterm,
    generated_images,
    machine_info,
    prepare_weights,
    ratio,
    round_robin,
    summarise,
    write_results,
)

from attnviz.models import TARGET_LAYERS  # noqa: E402


def compare(explainer, variant: str, x, layer: str) -> dict:
    """One model, one image: the float32 map against the bf16 map for the same class."""
    from attnviz.explainer import ExplainSettings, top_region_iou

    model = explainer.explainers[variant]
    fp32 = model.explain(x, ExplainSettings(layer=layer))
    bf16 = model.explain(x, ExplainSettings(layer=layer, precision="bf16", target=fp32.target.index))
    difference = np.abs(fp32.heatmap - bf16.heatmap)
    return {
        "max_abs_diff": round(float(difference.max()), 5),
        "mean_abs_diff": round(float(difference.mean()), 5),
        "top20_iou": round(top_region_iou(fp32.heatmap, bf16.heatmap), 4),
        "same_top1": fp32.top[0].index == bf16.top[0].index,
        "max_probability_diff": round(float(np.abs(fp32.probabilities - bf16.probabilities).max()), 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="timed repetitions per model and precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default 3)")
    parser.add_argument("--set", dest="set_name", help="model set name (default: the manifest's default set)")
    parser.add_argument("--weights-dir", help="weights folder holding manifest.json (default: weights/)")
    parser.add_argument("--random", action="store_true", help="random-weight models even if a set exists")
    parser.add_argument("--layer", default="layer4", choices=TARGET_LAYERS)
    parser.add_argument("--images", type=int, help="use only the first N images")
    parser.add_argument("--json", default=str(RESULTS / "bf16.json"), help="where to write the results")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    from attnviz.explainer import ExplainSettings, get_explainer
    from attnviz.images import load_image, preprocess

    exit_on_sigterm()
    machine = machine_info()
    set_name, weights_dir, set_note = prepare_weights(args.set_name, args.weights_dir, args.random)
    explainer = get_explainer(set_name, str(weights_dir))
    images = example_images() or generated_images(8)
    images = images[: args.images] if args.images else images
    tensors = [preprocess(load_image(p), explainer.model_set.preprocessing).tensor for p in images]
    native = machine["bf16"]["avx512_bf16"] or machine["bf16"]["amx_bf16"]
    print(f"machine: {machine['cpu']}, torch {machine['torch']}, {machine['torch_threads']} threads, "
          f"native bf16: {native}")
    print(f"models: {set_note}\n{len(images)} images, layer {args.layer}")

    per_model = {}
    for variant in explainer.explainers:
        rows = {p.name: compare(explainer, variant, x, args.layer) for p, x in zip(images, tensors, strict=True)}
        values = list(rows.values())
        per_model[variant] = {
            "max_abs_diff": max(r["max_abs_diff"] for r in values),
            "mean_abs_diff": round(float(np.mean([r["mean_abs_diff"] for r in values])), 5),
            "top20_iou_min": min(r["top20_iou"] for r in values),
            "top20_iou_mean": round(float(np.mean([r["top20_iou"] for r in values])), 4),
            "top1_agreement": round(sum(r["same_top1"] for r in values) / len(values), 4),
            "max_probability_diff": max(r["max_probability_diff"] for r in values),
            "images": rows,
        }

    fp32, bf16 = ExplainSettings(layer=args.layer), ExplainSettings(layer=args.layer, precision="bf16")
    tasks = {}
    for variant, model in explainer.explainers.items():
        tasks[f"fp32:{variant}"] = lambda m=model: m.explain(tensors[0], fp32)
        tasks[f"bf16:{variant}"] = lambda m=model: m.explain(tensors[0], bf16)
    times = round_robin(tasks, args.runs, args.warmup)
    print(f"\n{'':10} {'max |diff|':>10} {'mean |diff|':>11} {'IoU20 min':>9} {'IoU20 mean':>10} {'top-1 same':>10} "
          f"{'fp32 ms':>8} {'bf16 ms':>8} {'bf16/fp32':>9}")
    for variant, entry in per_model.items():
        entry["timing"] = {"fp32": summarise(times[f"fp32:{variant}"]), "bf16": summarise(times[f"bf16:{variant}"])}
        a, b = entry["timing"]["fp32"]["median_ms"], entry["timing"]["bf16"]["median_ms"]
        entry["timing"]["bf16_over_fp32"] = ratio(b, a)
        print(f"{variant:10} {entry['max_abs_diff']:10.4f} {entry['mean_abs_diff']:11.4f} "
              f"{entry['top20_iou_min']:9.3f} {entry['top20_iou_mean']:10.3f} {entry['top1_agreement']:10.0%} "
              f"{a:8.1f} {b:8.1f} {entry['timing']['bf16_over_fp32']:9.3f}")

    out = {
        "benchmark": "bench/bench_bf16.py",
        "machine": machine,
        "config": {"runs": args.runs, "warmup": args.warmup, "set": set_name, "layer": args.layer,
                   "images": [str(p) for p in images], "timed_image": str(images[0])},
        "notes": [set_note, "maps are each min-max scaled to [0, 1]; the bf16 map explains the float32 run's class",
                  "bf16 covers the image's own pass (forward and the backward to the target layer); pytorch-grad-cam "
                  "gets float32 activations and gradients"],
        "models": per_model,
    }
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
