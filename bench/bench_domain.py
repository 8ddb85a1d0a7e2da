"""What the out-of-domain score costs: the scoring step on its own against the explain path, in one run.

    python bench/bench_domain.py [--runs 21] [--set builtin] [--json bench/results/domain_cost.json]

For each model of a set with fitted statistics: the median of ``ModelExplainer.explain`` (one forward pass,
Grad-CAM at layer4, top-5, attention records, and the score) on one 224 px example scene, and the median of the
scoring step alone (``DomainModel.score`` on that pass's pooled features and logits), round-robin. The score
adds no pass: its features come from the explain pass's own capture.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_explain import RESULTS, bench_image, machine_info  # noqa: E402

from attnviz.capture import Capture  # noqa: E402
from attnviz.explainer import Explainer, ExplainSettings  # noqa: E402
from attnviz.images import load_image, preprocess  # noqa: E402
from attnviz.weights import load_model_set  # noqa: E402


def measure(explainer: Explainer, x: torch.Tensor, runs: int, warmup: int) -> dict:
    settings = ExplainSettings()
    passes = {}
    for variant, model_explainer in explainer.explainers.items():
        with Capture(model_explainer.model, records=False, features=True) as capture:
            logits = capture.run(x)
        passes[variant] = (capture.features, logits.detach())
    times = {v: {"explain": [], "score": []} for v in explainer.explainers}
    for run in range(warmup + runs):
        for variant, model_explainer in explainer.explainers.items():
            started = time.perf_counter()
            model_explainer.explain(x, settings)
            explained = time.perf_counter()
            model_explainer.domain.score(*passes[variant])
            scored = time.perf_counter()
            if run >= warmup:
                times[variant]["explain"].append((explained - started) * 1000)
                times[variant]["score"].append((scored - explained) * 1000)
    out = {}
    for variant, t in times.items():
        explain_ms, score_ms = statistics.median(t["explain"]), statistics.median(t["score"])
        out[variant] = {"scorer": explainer.explainers[variant].domain.scorer, "explain_median_ms": explain_ms,
                        "score_median_ms": score_ms, "score_over_explain": score_ms / explain_ms}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", dest="set_name", default=None)
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--json", type=Path, default=RESULTS / "domain_cost.json")
    args = parser.parse_args(argv)
    explainer = Explainer(load_model_set(args.set_name, args.weights_dir))
    missing = [v for v, e in explainer.explainers.items() if e.domain is None]
    if missing:
        raise SystemExit(f"no out-of-domain statistics for {', '.join(missing)}: "
                         f"run python -m attnviz.domain_fit fit first")
    image = bench_image(None)
    x = preprocess(load_image(image), explainer.model_set.preprocessing).tensor
    machine = machine_info()
    models = measure(explainer, x, args.runs, args.warmup)
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    data = {"machine": machine, "config": {"runs": args.runs, "warmup": args.warmup, "image": Path(image).name,
                                           "set": explainer.model_set.name}, "models": models}
    for variant, e in models.items():
        print(f"{variant:9s} explain {e['explain_median_ms']:.1f} ms, score {e['score_median_ms']:.3f} ms "
              f"({e['score_over_explain']:.2%})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
