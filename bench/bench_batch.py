"""Images per second of the batch path against one image at a time and against pytorch-grad-cam's own batched
GradCAM, in one run.

    python bench/bench_batch.py [--set builtin] [--images 16] [--batch-sizes 1 4 8 16] [--rounds 3]
                                [--json bench/results/batch.json]

Each round explains the same --images example scenes (224 px) with every model of the set, Grad-CAM at layer4,
top-5 and every attention record, through ``Explainer.explain_many`` at each batch size (1 is the one-image
path), and for the baseline through pytorch-grad-cam's ``GradCAM`` called on batches of the largest batch size
(the models' own pass and backward; no top-k, no attention records). The modes alternate within each round;
medians over rounds are reported, with the speed-up of each batch size over batch size 1. Not to be run while
training. CPU only: no GPU was at hand when it was written (a --device option is still to come).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_explain import RESULTS, example_images, machine_info  # noqa: E402

from attnviz.explainer import Explainer  # noqa: E402
from attnviz.images import load_image, preprocess  # noqa: E402
from attnviz.settings import build_settings  # noqa: E402
from attnviz.weights import load_model_set  # noqa: E402


def user_copies(model_set) -> dict:
    """Each model as a user of pytorch-grad-cam holds it (parameters requiring grad, as its backward needs): the
    explainer keeps its own models' parameters frozen."""
    return {variant: copy.deepcopy(model).eval().requires_grad_(True) for variant, model in model_set.models.items()}


def pgc_batched(models: dict, preprocessing, images: list, batch_size: int) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.cat([preprocess(image, preprocessing).tensor for image in images])
    for model in models.values():
        with torch.no_grad():
            targets = model(x).argmax(1).tolist()
        with GradCAM(model, target_layers=[model.layer4]) as cam:
            for start in range(0, len(x), batch_size):
                chunk = targets[start : start + batch_size]
                cam(x[start : start + batch_size], [ClassifierOutputTarget(t) for t in chunk])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="builtin")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "batch.json")
    args = parser.parse_args(argv)
    model_set = load_model_set(args.set)
    explainer = Explainer(model_set)
    paths = example_images()
    images = [load_image(paths[i % len(paths)]) for i in range(args.images)]
    settings = build_settings(model_set.classes, model_set.models)
    explainer.explain_many(images[:2], settings, batch_size=2)  # warm-up: one-time set-up out of the timings
    baseline = user_copies(model_set)
    pgc_batched(baseline, model_set.preprocessing, images[:2], 2)
    times: dict[str, list[float]] = {f"attnviz_batch_{b}": [] for b in args.batch_sizes}
    largest = max(args.batch_sizes)
    times[f"pgc_gradcam_batch_{largest}"] = []
    for _ in range(args.rounds):
        for batch in args.batch_sizes:
            started = time.perf_counter()
            explainer.explain_many(images, settings, batch_size=batch)
            times[f"attnviz_batch_{batch}"].append(time.perf_counter() - started)
        started = time.perf_counter()
        pgc_batched(baseline, model_set.preprocessing, images, largest)
        times[f"pgc_gradcam_batch_{largest}"].append(time.perf_counter() - started)
    one = statistics.median(times[f"attnviz_batch_{args.batch_sizes[0]}"])
    summary = {}
    for mode, seconds in times.items():
        median = statistics.median(seconds)
        summary[mode] = {"seconds_median": round(median, 3), "images_per_s": round(args.images / median, 3),
                         "speedup_over_batch_1": round(one / median, 3)}
    result = {"command": "python bench/bench_batch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "set": args.set, "models": list(model_set.models), "images": args.images, "rounds": args.rounds,
              "threads": torch.get_num_threads(), "summary": summary, "times_s": times, "machine": machine_info()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
