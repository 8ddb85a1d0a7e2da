"""Fit, choose and report the out-of-domain scorer of a model set trained on attnviz's scenes.

    python -m attnviz.domain_fit fit --set builtin        # statistics beside each checkpoint, in the manifest
    python -m attnviz.domain_fit report --set builtin     # the flagged shares on held-out images (JSON + table)

``fit`` computes every model's pooled features on the set's training scenes and fits every scorer of
``attnviz.domain``; each scorer's threshold is the 99th percentile of its scores on validation scenes (so about
1 % of in-domain scenes per model, at most about 3 % of explanations with three models, are flagged). The scorer
shipped for the whole set is the one that flags the most non-scene images made by ``attnviz.probes`` at its
threshold (ties: the larger AUROC of validation scenes against those images); the comparison is written to
``<set>/domain.json``. Only generated images take part in choosing.

``report`` then measures, without tuning anything, the share of images flagged per model and per explanation
(any model flags) on test, unseen-glyph and two-object scenes (and unseen-design scenes for version-2 sets)
and on the real photographs that ship inside scikit-image (``PHOTOS``), and adds it to ``<set>/domain.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnviz.capture import Capture
from attnviz.domain import SCORERS, DomainModel, fit_statistics, raw_score
from attnviz.errors import AttnvizError
from attnviz.images import preprocess

QUANTILE = 0.99
SCENE_SEED = 0
# scikit-image's bundled photographs (skimage.data): every file of it that is a photograph of the world
PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "retina", "rocket")


def pooled_features(model: torch.nn.Module, images: list[np.ndarray], preprocessing, batch_size: int = 32
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), logits (N, C)) of the images' own passes, as the explain path makes them."""
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = torch.cat([preprocess(Image.fromarray(image), preprocessing).tensor for image in chunk])
        with Capture(model, records=False, features=True) as capture:
            logits.append(capture.run(x).detach().float())
            features.append(capture.features)
    return torch.cat(features), torch.cat(logits)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an outside image scores higher than an inside one (ties count half)."""
    both = np.concatenate([inside, outside])
    ranks = np.empty(len(both))
    order = both.argsort(kind="stable")
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # average ranks of ties
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[len(inside):].sum() - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def _scenes(split: str, count: int, version: int) -> tuple[list[np.ndarray], torch.Tensor]:
    from attnviz.scenes import make_scene

    scenes = [make_scene(SCENE_SEED, split, i, version=version) for i in range(count)]
    return [s.image for s in scenes], torch.tensor([s.labels[0] for s in scenes])


def choose(per_model: dict[str, dict[str, dict]]) -> str:
    """The scorer that flags the most probe images on average over the models (ties: larger mean AUROC)."""
    def merit(scorer: str) -> tuple[float, float]:
        return (float(np.mean([m[scorer]["probes_flagged"] for m in per_model.values()])),
                float(np.mean([m[scorer]["auroc"] for m in per_model.values()])))

    return max(SCORERS, key=merit)


def _fit_model(model: torch.nn.Module, info, version: int, train: int, val: int, probe_list: list[np.ndarray]
               ) -> tuple[dict[str, DomainModel], dict[str, dict]]:
    """Every scorer fitted for one model, with its threshold, and how each does on validation scenes and probes."""
    images, labels = _scenes("train", train, version)
    train_features, _ = pooled_features(model, images, info.preprocessing)
    statistics = fit_statistics(train_features, labels, len(info.classes))
    val_features, val_logits = pooled_features(model, _scenes("val", val, version)[0], info.preprocessing)
    probe_features, probe_logits = pooled_features(model, probe_list, info.preprocessing)
    fitted, comparison = {}, {}
    for scorer in SCORERS:
        inside = raw_score(scorer, statistics, val_features, val_logits).numpy()
        outside = raw_score(scorer, statistics, probe_features, probe_logits).numpy()
        threshold = float(np.quantile(inside, QUANTILE))
        fitted[scorer] = DomainModel(scorer, statistics, threshold)
        comparison[scorer] = {"threshold": threshold, "val_flagged": float((inside > threshold).mean()),
                              "probes_flagged": float((outside > threshold).mean()), "auroc": auroc(inside, outside)}
    return fitted, comparison


def fit_set(set_name: str | None, weights_dir=None, train: int = 1500, val: int = 600, probes: int = 30,
            progress: bool = True) -> dict:
    """Fit every scorer for every model of the set, choose one, store its statistics; returns the comparison."""
    from attnviz.probes import probe_images
    from attnviz.scenes import CLASSES
    from attnviz.weights import Manifest, load_model_set, write_safetensors

    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    info = manifest.get(set_name)
    if sorted(info.classes) != sorted(CLASSES):
        raise AttnvizError(f"model set {info.name!r} was not trained on attnviz's scenes, so there are no training "
                           f"scenes to fit an out-of-domain score on; its results say 'not calibrated'")
    loaded = load_model_set(info.name, manifest.weights_dir)
    started = time.perf_counter()
    probe_list = [image for _, image in probe_images(probes)]
    fitted, comparison = {}, {}
    for variant, model in loaded.models.items():
        version = int(info.models[variant].extra.get("scenes", {}).get("version", 1))
        if progress:
            print(f"{variant}: features of {train} training, {val} validation scenes and {len(probe_list)} "
                  f"non-scene images", file=sys.stderr, flush=True)
        fitted[variant], comparison[variant] = _fit_model(model.eval(), info, version, train, val, probe_list)
    chosen = choose(comparison)
    files = {}
    for variant, scorers in fitted.items():
        file = f"{info.name}/{variant}.domain.safetensors"
        domain = scorers[chosen]
        sha = write_safetensors(domain.to_tensors(), manifest.weights_dir / file,
                                metadata={"scorer": chosen, "train_scenes": str(train), "val_scenes": str(val)})
        manifest.data["sets"][info.name]["models"][variant]["domain"] = {
            "file": file, "sha256": sha, "scorer": chosen, "threshold": domain.threshold,
            "fitted_on": {"train": train, "val": val, "seed": SCENE_SEED, "quantile": QUANTILE}}
        files[variant] = file
    manifest.save()
    result = {"chosen": chosen, "quantile": QUANTILE, "scenes": {"train": train, "val": val},
              "probes": {"per_kind": probes, "count": len(probe_list)}, "files": files, "models": comparison,
              "minutes": round((time.perf_counter() - started) / 60, 1)}
    # a new choice makes any earlier report stale: the file starts again
    (manifest.weights_dir / info.name / "domain.json").write_text(json.dumps({"choice": result}, indent=2) + "\n")
    return result


def _merge(path: Path, data: dict) -> None:
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **data}, indent=2) + "\n")


def photographs() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled photographs as RGB uint8 arrays (PHOTOS); one line if scikit-image is missing."""
    try:
        from skimage import data
    except ImportError as exc:
        raise AttnvizError("the report needs scikit-image's photographs: .venv/bin/pip install scikit-image") from exc
    out = []
    for name in PHOTOS:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        out.append((name, np.ascontiguousarray(image[..., :3]).astype(np.uint8)))
    return out


def report(set_name: str | None, weights_dir=None, scenes: int = 600, progress: bool = True) -> dict:
    """Share of images flagged per model and per explanation on held-out scenes and photographs."""
    from attnviz.weights import Manifest, load_model_set

    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    info = manifest.get(set_name)
    loaded = load_model_set(info.name, manifest.weights_dir)
    domains = {v: loaded.domain_model(v) for v in loaded.models}
    if not all(domains.values()):
        raise AttnvizError(f"model set {info.name!r} has no fitted out-of-domain statistics for every model: "
                           f"run python -m attnviz.domain_fit fit --set {info.name} first")
    version = max(int(info.models[v].extra.get("scenes", {}).get("version", 1)) for v in loaded.models)
    groups = {split: _scenes(split, scenes if split != "pairs" else min(scenes, 240), version)[0]
              for split in ("test", "unseen", "pairs") + (("unseen_design",) if version > 1 else ())}
    photos = photographs()
    groups["photographs"] = [image for _, image in photos]
    started = time.perf_counter()
    flags: dict[str, dict[str, np.ndarray]] = {group: {} for group in groups}
    for variant, model in loaded.models.items():
        for group, images in groups.items():
            if progress:
                print(f"{variant}: {len(images)} {group}", file=sys.stderr, flush=True)
            features, logits = pooled_features(model.eval(), images, info.preprocessing)
            flags[group][variant] = domains[variant].flags(domains[variant].score(features, logits))
    result = {"scorer": next(iter(domains.values())).scorer, "groups": {}, "photographs": {}}
    for group, per_model in flags.items():
        any_flag = np.any(np.stack(list(per_model.values())), axis=0)
        result["groups"][group] = {"images": len(any_flag), "explanation_flagged": float(any_flag.mean()),
                                   "models_flagged": {v: float(f.mean()) for v, f in per_model.items()}}
    for i, (name, _) in enumerate(photos):
        result["photographs"][name] = {v: bool(f[i]) for v, f in flags["photographs"].items()}
    result["minutes"] = round((time.perf_counter() - started) / 60, 1)
    _merge(manifest.weights_dir / info.name / "domain.json", {"report": result})
    return result


def markdown(data: dict) -> str:
    """The README's table from ``<set>/domain.json``."""
    lines = [f"Scorer chosen: **{data['choice']['chosen']}** (threshold: the {data['choice']['quantile']:.0%} "
             f"quantile of each model's scores on {data['choice']['scenes']['val']} validation scenes).", "",
             "| images | count | explanations flagged | per model |", "|---|---:|---:|---|"]
    for group, entry in data.get("report", {}).get("groups", {}).items():
        per_model = ", ".join(f"{v} {share:.1%}" for v, share in entry["models_flagged"].items())
        lines.append(f"| {group.replace('_', ' ')} | {entry['images']} | {entry['explanation_flagged']:.1%} | "
                     f"{per_model} |")
    lines += ["", "Choosing (validation scenes against non-scene images; mean over the models):", "",
              "| scorer | non-scene images flagged | AUROC |", "|---|---:|---:|"]
    for scorer in SCORERS:
        entries = [m[scorer] for m in data["choice"]["models"].values()]
        lines.append(f"| {scorer} | {np.mean([e['probes_flagged'] for e in entries]):.1%} | "
                     f"{np.mean([e['auroc'] for e in entries]):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnviz.domain_fit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("fit", "fit, choose and store the scorer"), ("report", "measure it on held-out images"),
                       ("table", "print the README's table from <set>/domain.json")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--set", dest="set_name", help="model set (default: the manifest's)")
        cmd.add_argument("--weights-dir", help="folder holding manifest.json (default: $ATTNVIZ_WEIGHTS or weights/)")
        cmd.add_argument("--quiet", action="store_true")
    sub.choices["fit"].add_argument("--train", type=int, default=1500, help="training scenes (1500)")
    sub.choices["fit"].add_argument("--val", type=int, default=600, help="validation scenes (600)")
    sub.choices["fit"].add_argument("--probes", type=int, default=30, help="non-scene images per kind (30)")
    sub.choices["report"].add_argument("--scenes", type=int, default=600, help="scenes per split (600)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            result = fit_set(args.set_name, args.weights_dir, args.train, args.val, args.probes, not args.quiet)
            print(f"chose {result['chosen']}; wrote {', '.join(result['files'].values())} "
                  f"({result['minutes']} min)")
        elif args.command == "report":
            result = report(args.set_name, args.weights_dir, args.scenes, not args.quiet)
            print(json.dumps(result["groups"], indent=2))
        else:
            from attnviz.weights import Manifest

            manifest = Manifest(Path(args.weights_dir) if args.weights_dir else None)
            path = manifest.weights_dir / manifest.get(args.set_name).name / "domain.json"
            if not path.exists():
                raise AttnvizError(f"{path} is missing: run python -m attnviz.domain_fit fit and report first")
            print(markdown(json.loads(path.read_text())))
    except AttnvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
