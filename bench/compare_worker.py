"""One side of bench/compare.py: the attnviz of ``--tree``, answering one timed task per line of stdin.

Reads lines ``TASK VARIANT`` (task: forward, explain or handler) and writes ``{"seconds": ...}`` for each; the
first line it writes names the set's models and the tree's commit. It runs with whichever attnviz is in
``--tree`` and so uses only what every version since the first app has: ``get_explainer`` (in
``attnviz.explainer``, or ``attnviz.explain`` before it was renamed), ``ModelExplainer.explain`` and
``AttnvizApp.explain_api``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _explain_module(tree: Path):
    for name in ("attnviz.explainer", "attnviz.explain"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "get_explainer"):
            return module
    raise SystemExit(f"{tree}: no attnviz explain module found")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--set", dest="set_name", required=True)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    import torch

    from attnviz import ui
    from attnviz.images import load_image, preprocess

    module = _explain_module(args.tree)
    explainer = module.get_explainer(args.set_name, str(args.weights_dir))
    settings = module.ExplainSettings()
    x = preprocess(load_image(args.image), explainer.model_set.preprocessing).tensor
    app = ui.AttnvizApp(weights_dir=args.weights_dir, default_set=args.set_name)

    def forward(variant: str) -> None:
        with torch.no_grad():
            explainer.explainers[variant].model(x)

    def explain(variant: str) -> None:
        explainer.explainers[variant].explain(x, settings)

    def handler(variant: str) -> None:
        app.explain_api(str(args.image), args.set_name, [variant], "gradcam", ui.OWN_TOP1, "layer4", 0.5, "jet",
                        False, False, "fp32", False, progress=None)

    tasks = {"forward": forward, "explain": explain, "handler": handler}
    revision = subprocess.run(["git", "-C", str(args.tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    imported_from = Path(module.__file__).resolve()
    if args.tree.resolve() not in imported_from.parents:
        raise SystemExit(f"attnviz was imported from {imported_from}, not from {args.tree}")
    print(json.dumps({"variants": list(explainer.explainers), "revision": revision}), flush=True)
    for line in sys.stdin:
        task, variant = line.split()
        began = time.perf_counter()
        tasks[task](variant)
        print(json.dumps({"seconds": time.perf_counter() - began}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
