"""Switching attention off: which gates a knock-out spec names, and what replaces their output.

A spec is a comma-separated list of ``TARGET[:GATE]``. TARGET is ``all``, a stage (``layer3``), a block
(``layer3.2``) or a stage with a wildcard (``layer4.*``); GATE is a gate the block's family declares
(``channel`` and ``spatial`` for CBAM, ``channel`` for SE and ECA); without GATE, every gate of the target.
A knocked-out gate outputs 1 everywhere (``identity``: the block as if it had no such gate), or the mean of its
output over the set's validation scenes (``mean``: the gentler test, since SE's last blocks average about 0.08),
stored once per model beside the checkpoint (``python -m attnviz.knockout fit``).

    gates = parse_knockout("layer4.*:spatial", model_gates(model))
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from attnviz.capture import Gate
from attnviz.errors import AttnvizError

KNOCKOUT_VALUES = ("identity", "mean")
STAGES = ("layer1", "layer2", "layer3", "layer4")
BLOCKS_PER_STAGE = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}  # ResNet50's layout, every family
SCENE_SEED = 0  # the built-in dataset's seed, as attnviz.train and attnviz.analyze use it
_TARGET = re.compile(r"^(all|layer[1-4](?:\.(?:\d+|\*))?)$")


def _valid_text(gate_names: Iterable[str]) -> str:
    blocks = ", ".join(f"{s}.0-{s}.{n - 1}" for s, n in BLOCKS_PER_STAGE.items())
    names = ", ".join(sorted(set(gate_names))) or "none (no model of the set has attention)"
    return f"targets: all, a stage (layer1-layer4), a block ({blocks}) or layerN.*; gates: {names}"


def _matches(target: str, block: str) -> bool:
    if target == "all":
        return True
    stage, _, rest = target.partition(".")
    return block.split(".")[0] == stage and (rest in ("", "*") or block == target)


def _target_exists(target: str) -> bool:
    if not _TARGET.match(target):
        return False
    stage, _, index = target.partition(".")
    return index in ("", "*") or int(index) < BLOCKS_PER_STAGE[stage]


def check_spec(spec: str, gate_names: Iterable[str]) -> list[tuple[str, str | None]]:
    """The spec's (target, gate) pairs; one line naming the valid targets and gates when it is not valid.

    ``gate_names`` are the gates that the chosen models' families declare, together."""
    gate_names = set(gate_names)
    pairs = []
    for part in (p.strip() for p in spec.split(",")):
        target, _, gate = part.partition(":")
        target, gate = target.strip(), gate.strip() or None
        if not part or not _target_exists(target) or (gate is not None and gate not in gate_names):
            raise AttnvizError(f"knock-out {part!r} is not valid; write TARGET[:GATE], comma-separated, with "
                               f"{_valid_text(gate_names)}")
        pairs.append((target, gate))
    return pairs


def parse_knockout(spec: str, gates: list[Gate], gate_names: Iterable[str] | None = None) -> list[Gate]:
    """The gates of one model that ``spec`` names, in forward order (empty: the model is unaffected).

    ``gate_names`` are the gate names valid for the spec (default: this model's); a spec naming a gate this
    model lacks, but another model of the set has, leaves this model's blocks as they are."""
    pairs = check_spec(spec, gate_names if gate_names is not None else {g.spec.name for g in gates})
    return [g for g in gates if any(_matches(t, g.block) and name in (None, g.spec.name) for t, name in pairs)]


def replacements(chosen: list[Gate], value: str, means: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor | float]:
    """Gate key -> what the gate outputs instead: 1.0 (identity) or its stored mean output."""
    if value not in KNOCKOUT_VALUES:
        raise AttnvizError(
            f"unknown knock-out value {value!r}; choose one of {', '.join(KNOCKOUT_VALUES)}",
            code="choice",
        )
    if value == "identity":
        return {g.key: 1.0 for g in chosen}
    missing = [g.key for g in chosen if means is None or g.key not in means]
    if missing:
        raise AttnvizError(f"no stored mean output for gate {missing[0]}; use knock-out value identity, or store "
                           f"the means with python -m attnviz.knockout fit --set NAME")
    return {g.key: means[g.key] for g in chosen}


# --------------------------------------------------------------------------- the stored means


def mean_gate_outputs(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each gate's output averaged over every image of ``batches``: gate key -> (channels,) or (height, width)."""
    from attnviz.capture import Capture

    sums: dict[str, torch.Tensor] = {}
    count = 0
    with Capture(model.eval()) as capture:
        for x in batches:
            capture.run(x)
            for gate, values in zip(capture.gates, capture.raw_records(), strict=True):
                total = torch.from_numpy(values).double().sum(dim=0)
                sums[gate.key] = total if gate.key not in sums else sums[gate.key] + total
            count += len(x)
    if count == 0:
        raise AttnvizError("no images to average the gates over")
    return {key: (total / count).float() for key, total in sums.items()}


def fit_set(set_name: str | None, weights_dir=None, scenes: int = 120, batch_size: int = 24) -> list[str]:
    """Store every model's mean gate outputs over the first ``scenes`` validation scenes beside its checkpoint
    (``<set>/<variant>.gate_means.safetensors``, sha256 in the manifest); returns the files written."""
    from pathlib import Path

    from PIL import Image

    from attnviz.images import preprocess
    from attnviz.scenes import CLASSES, make_scene
    from attnviz.weights import Manifest, load_model_set, write_safetensors

    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    info = manifest.get(set_name)
    if sorted(info.classes) != sorted(CLASSES):
        raise AttnvizError(f"model set {info.name!r} was not trained on attnviz's scenes, so it has no validation "
                           f"scenes to average over; knock out with value identity")
    loaded = load_model_set(info.name, manifest.weights_dir)
    images = [preprocess(Image.fromarray(make_scene(SCENE_SEED, "val", i).image), info.preprocessing).tensor[0]
              for i in range(scenes)]
    batches = [torch.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    written = []
    for variant, model in loaded.models.items():
        means = mean_gate_outputs(model, batches)
        if not means:
            continue  # no gates: nothing to switch off
        file = f"{info.name}/{variant}.gate_means.safetensors"
        sha = write_safetensors(means, manifest.weights_dir / file, metadata={"split": "val", "scenes": str(scenes)})
        raw = manifest.data["sets"][info.name]["models"][variant]
        raw["gate_means"] = {"file": file, "sha256": sha, "split": "val", "scenes": scenes, "seed": SCENE_SEED}
        written.append(file)
    manifest.save()
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m attnviz.knockout",
                                     description="Store each model's mean gate outputs for knock-out value mean.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="average every gate over the set's validation scenes")
    fit.add_argument("--set", dest="set_name", help="model set (default: the manifest's)")
    fit.add_argument("--weights-dir", help="folder holding manifest.json (default: $ATTNVIZ_WEIGHTS or weights/)")
    fit.add_argument("--scenes", type=int, default=120, help="validation scenes to average over (120)")
    args = parser.parse_args(argv)
    try:
        if args.scenes < 1:
            raise AttnvizError("--scenes must be at least 1")
        for file in fit_set(args.set_name, args.weights_dir, args.scenes):
            print(f"wrote {file}")
    except AttnvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
