"""Train ResNet50 with any registered attention design (or none) on the generated scenes, one shared recipe.

    python -m attnviz.scenes generate --version 2 --out data/scenes_v2
    python -m attnviz.train --variant se --recipe v2 --data data/scenes_v2 --out weights/builtin
    python -m attnviz.train --report weights/builtin/se.json     # top-1 per split with Wilson intervals

The run is resumable: its state is saved to ``--state`` every few steps and on
Ctrl-C, and the same command picks it up again. At the end the weights are
written as fp16 safetensors and the measured accuracies as ``<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from attnviz.metrics import wilson
from attnviz.models import VARIANTS, ModelSpec, build_model
from attnviz.recipe import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    Recipe,
    batch_indices,
    cpu_precision,
    mix_style,
    mix_style_draws,
    normalise,
    recipe_named,
)
from attnviz.scenes import SceneSplit


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: SceneSplit,
    device: torch.device,
    resolution: int = 224,
    bf16: bool = False,
    limit: int | None = None,
    batch_size: int = 50,
) -> float:
    """Top-1 accuracy (first object's label) on a split."""
    model.eval()
    n = min(len(split), limit or len(split))
    correct = 0
    for start in range(0, n, batch_size):
        images = torch.from_numpy(np.array(split.images[start : min(start + batch_size, n)]))
        x = normalise(images, resolution).to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, bf16):
            logits = model(x)
        labels = torch.from_numpy(split.labels[start : start + len(images), 0]).to(device)
        correct += int((logits.argmax(1) == labels).sum())
    return correct / n


def _save_state(path: Path, model, optimizer, step: int, elapsed: float, history: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "history": history,
        },
        tmp,
    )
    tmp.replace(path)


MIX_STYLE_SITES = ("layer1", "layer2")  # after these stages, as the MixStyle paper's best ResNet placement


def _mix_style_hooks(model, recipe: Recipe, step: int, batch: int) -> list:
    """Forward hooks that apply this step's MixStyle draws after MIX_STYLE_SITES (none when the recipe has
    none); the caller removes them after the forward pass."""
    if recipe.mixstyle <= 0:
        return []
    hooks, device = [], next(model.parameters()).device
    for site, draw in zip(MIX_STYLE_SITES, mix_style_draws(recipe, step, batch, len(MIX_STYLE_SITES)), strict=True):
        if draw is not None:
            weights, partner = (t.to(device) for t in draw)
            hooks.append(getattr(model, site).register_forward_hook(
                lambda module, inputs, output, w=weights, p=partner: mix_style(output, w, p)))
    return hooks


def _step(model, optimizer, train_split: SceneSplit, recipe: Recipe, step: int, device: torch.device):
    """Optimisation step ``step`` of the recipe; returns (loss, accuracy, images, resolution)."""
    resolution = recipe.resolution_at(step)
    idx = batch_indices(len(train_split), recipe.batch_size, step, recipe.seed)
    images = torch.from_numpy(train_split.images[idx])
    flip = torch.from_numpy(np.random.default_rng([recipe.seed, 10**6 + step]).random(len(idx)) < recipe.hflip)
    images[flip] = images[flip].flip(2)
    x = normalise(images, resolution, recipe, step).to(device)
    if recipe.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(train_split.labels[idx, 0]).to(device)
    for group in optimizer.param_groups:
        group["lr"] = recipe.lr_at(step)
    hooks = _mix_style_hooks(model, recipe, step, len(idx))
    try:
        with _autocast(device, recipe.bf16):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
    finally:
        for hook in hooks:
            hook.remove()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    acc = float((logits.detach().argmax(1) == y).float().mean())
    return loss.item(), acc, len(idx), resolution


def _start(spec: ModelSpec, recipe: Recipe, device: torch.device, state_path: Path):
    """The model and optimiser, fresh from the recipe's seed or as the saved state left them; with the step,
    minutes and history so far."""
    torch.manual_seed(recipe.seed)
    model = build_model(spec).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if not state_path.exists():
        return model, optimizer, 0, 0.0, []
    state = torch.load(state_path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"resuming {spec.variant} from step {state['step']} ({state['elapsed'] / 60:.1f} min done)", flush=True)
    return model, optimizer, state["step"], state["elapsed"], state["history"]


def train(
    variant: str,
    data: Path,
    out: Path,
    state_path: Path,
    recipe: Recipe,
    device: torch.device,
    save_every: int = 25,
    progress: bool = True,
    log_every: int = 50,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    compile: bool = False,
) -> dict:
    """Train one variant; returns the result record written next to the weights.

    ``max_steps`` / ``max_minutes`` end this invocation early (state saved, {} returned); the
    same call later resumes where it stopped. ``compile`` runs the training steps through
    ``torch.compile`` (one compilation per resolution, about 2 minutes each here), which fuses the
    attention gates' elementwise work: bench/bench_train_step.py measures what it saves per step.
    """
    from tqdm import tqdm

    if compile and recipe.mixstyle > 0:  # its per-step hooks would recompile the model every step
        raise ValueError("compile does not support MixStyle recipes; train this recipe without --compile")

    train_split = SceneSplit(data / "train")
    classes = train_split.classes
    spec = ModelSpec(variant=variant, num_classes=len(classes))
    model, optimizer, step, elapsed, history = _start(spec, recipe, device, state_path)
    forward = torch.compile(model, dynamic=False) if compile else model  # shares the model's parameters

    stop = {"now": False}

    def request_stop(signum, frame):  # finish the current step, save, exit
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    bar = tqdm(total=recipe.total_steps, initial=step, desc=f"train {variant}", unit="step", disable=not progress,
               mininterval=5)
    ema_loss, ema_acc = None, None
    first_step = step
    wall_start = time.perf_counter()
    try:
        model.train()
        while step < recipe.total_steps and not stop["now"]:
            if max_steps is not None and step - first_step >= max_steps:
                break
            if max_minutes is not None and time.perf_counter() - wall_start > 60 * max_minutes:
                break
            started = time.perf_counter()
            loss_value, acc, images, resolution = _step(forward, optimizer, train_split, recipe, step, device)
            ema_loss = loss_value if ema_loss is None else 0.95 * ema_loss + 0.05 * loss_value
            ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
            step += 1
            elapsed += time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(
                loss=f"{ema_loss:.3f}",
                acc=f"{ema_acc:.3f}",
                px=resolution,
                img_s=f"{images / (time.perf_counter() - started):.1f}",
            )
            if step % log_every == 0:
                history.append({"step": step, "loss": round(ema_loss, 4), "acc": round(ema_acc, 4),
                                "step_loss": round(loss_value, 4), "minutes": round(elapsed / 60, 2)})
            if step % save_every == 0 or step == recipe.total_steps:
                _save_state(state_path, model, optimizer, step, elapsed, history)
    except KeyboardInterrupt:
        stop["now"] = True
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    if step < recipe.total_steps:
        _save_state(state_path, model, optimizer, step, elapsed, history)
        print(f"stopped at step {step}/{recipe.total_steps}; run the same command to resume", flush=True)
        return {}
    return finish(model, spec, classes, data, out, recipe, device, elapsed, history, compiled=compile)


def finish(
    model,
    spec: ModelSpec,
    classes: list[str],
    data: Path,
    out: Path,
    recipe: Recipe,
    device: torch.device,
    elapsed: float,
    history: list,
    compiled: bool = False,
) -> dict:
    """Write fp16 safetensors, then measure accuracy of exactly those weights in fp32."""
    out.mkdir(parents=True, exist_ok=True)
    weights_file = out / f"{spec.variant}.safetensors"
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights_file), metadata={"variant": spec.variant, "format": "attnviz"})
    model = build_model(spec)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    model = model.to(device).to(memory_format=torch.channels_last)
    started = time.perf_counter()
    accuracy, sizes = {}, {}
    for split, key in EVALUATED_SPLITS.items():
        if (data / split / "meta.json").exists():
            scenes = SceneSplit(data / split)
            accuracy[key] = round(evaluate(model, scenes, device), 4)
            sizes[key] = scenes.meta["count"]
    train_meta = SceneSplit(data / "train").meta
    result = {
        "variant": spec.variant,
        "attention": spec.attention_options(),
        "classes": classes,
        "file": weights_file.name,
        "accuracy_top1_224px_fp32": accuracy,
        "evaluated_on": sizes,
        "wilson_95": wilson_intervals(accuracy, sizes),
        "scenes": {"version": train_meta.get("version", 1), "seed": train_meta.get("seed", 0),
                   "training_designs": train_meta.get("designs", ["openmoji"])},
        "train_minutes": round(elapsed / 60, 1),
        "eval_minutes": round((time.perf_counter() - started) / 60, 1),
        "recipe": asdict(recipe),
        "machine": {
            "device": str(device),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "compiled": compiled,
        },
        "history": history,
    }
    (out / f"{spec.variant}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("variant", "accuracy_top1_224px_fp32", "train_minutes")}), flush=True)
    return result


# Split folder -> accuracy key: "unseen" holds the glyphs kept out of training ("unseen_glyph"), and
# "unseen_design" a whole design kept out (version 2 scenes only).
EVALUATED_SPLITS = {"val": "val", "test": "test", "unseen": "unseen_glyph", "unseen_design": "unseen_design"}


def describe_set(variants: list[str], n_classes: int, scenes: dict) -> str:
    """The model set's one-line description: what is in it and what it was trained on."""
    from attnviz.models import VARIANT_TITLES

    titles = ", ".join(VARIANT_TITLES[v] for v in variants)
    designs = ", ".join(scenes.get("training_designs", ["openmoji"]))
    return (f"{titles} trained by attnviz with one recipe on generated scenes of emoji drawn in {designs} "
            f"({n_classes} classes); they know only these classes")


def register(out: Path, weights_dir: Path | None = None, set_name: str = "builtin") -> list[str]:
    """Register every finished ``<variant>.safetensors`` + ``<variant>.json`` under ``out`` as a model set."""
    from attnviz.models import parameter_count
    from attnviz.scenes import attribution
    from attnviz.weights import Manifest, ModelEntry, Preprocessing, sha256_of

    manifest = Manifest(weights_dir)
    registered = []
    for variant in VARIANTS:
        record_file = out / f"{variant}.json"
        if not record_file.exists():
            continue
        record = json.loads(record_file.read_text())
        weights_file = (out / record["file"]).resolve()
        spec = ModelSpec.from_options(variant, len(record["classes"]), record["attention"])
        scenes = record.get("scenes", {"version": 1, "seed": 0, "training_designs": ["openmoji"]})
        generate = f"python -m attnviz.scenes generate --version {scenes['version']} --seed {scenes['seed']}"
        accuracy = dict(record["accuracy_top1_224px_fp32"])
        accuracy["scenes"] = dict(record["evaluated_on"])
        accuracy["measured"] = (
            "top-1 at 224 px in float32 with the shipped fp16 weights, on "
            + ", ".join(f"{n} {s} scenes" for s, n in record["evaluated_on"].items())
            + f" ({generate})"
        )
        entry = ModelEntry(
            variant=variant,
            file=weights_file.relative_to(manifest.weights_dir.resolve()).as_posix(),
            sha256=sha256_of(weights_file),
            classes=record["classes"],
            preprocessing=Preprocessing(resize=224, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            attention=record["attention"],
            source=f"trained by attnviz: python -m attnviz.train --variant {variant}",
            accuracy=accuracy,
            extra={
                "parameters": parameter_count(build_model(spec)),
                "train_minutes": record["train_minutes"],
                "recipe": record["recipe"],
                "machine": record["machine"],
                "scenes": scenes,
            },
        )
        registered.append(variant)
        manifest.put_model(
            set_name,
            entry,
            set_extra={"attribution": attribution(), "dataset": generate},
        )
    if not registered:
        return registered
    raw = manifest.data["sets"][set_name]
    in_set = [v for v in VARIANTS if v in raw["models"]]  # the whole set, also models registered before
    raw["description"] = describe_set(in_set, len(record["classes"]), scenes)
    manifest.data.setdefault("default_set", set_name)
    manifest.save()
    return registered


def _recipe_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Recipe:
    """The named recipe with the command line's --phases, --finetune, --batch-size and --no-bf16 on top."""
    recipe = recipe_named(args.recipe, batch_size=args.batch_size, bf16=not args.no_bf16)
    if args.phases:
        try:
            recipe.phases = [(int(px), int(n)) for px, n in (p.split(":") for p in args.phases)]
        except ValueError:
            parser.error("--phases takes PX:SAMPLES pairs, e.g. 128:40000 224:4800")
    if args.finetune:
        if args.finetune == "none":
            recipe.finetune = None
        else:
            try:
                px, samples, lr = args.finetune.split(":")
                recipe.finetune = (int(px), int(samples), float(lr))
            except ValueError:
                parser.error("--finetune takes PX:SAMPLES:LR, e.g. 224:10000:0.0002, or none")
    return recipe


def wilson_intervals(accuracy: dict[str, float], sizes: dict[str, int]) -> dict[str, list[float]]:
    """Each split's Wilson 95 % interval of its top-1 accuracy (from the rounded share and the split's size)."""
    return {key: [round(v, 4) for v in wilson(round(share * sizes[key]), sizes[key])]
            for key, share in accuracy.items() if key in sizes}


def report(records: list[Path]) -> str:
    """A table of the records' top-1 accuracies with Wilson 95 % intervals, one row per record."""
    rows = [json.loads(Path(r).read_text(encoding="utf-8")) for r in records]
    keys = list(dict.fromkeys(k for row in rows for k in row["accuracy_top1_224px_fp32"]))
    lines = ["| record | " + " | ".join(f"{k} (n)" for k in keys) + " | train min |",
             "|---|" + "---|" * (len(keys) + 1)]
    for path, row in zip(records, rows, strict=True):
        accuracy, sizes = row["accuracy_top1_224px_fp32"], row["evaluated_on"]
        intervals = wilson_intervals(accuracy, sizes)
        cells = [f"{100 * accuracy[k]:.1f} % ({100 * intervals[k][0]:.1f}-{100 * intervals[k][1]:.1f}, "
                 f"{sizes[k]})" if k in accuracy else "" for k in keys]
        lines.append(f"| {Path(path).name} | " + " | ".join(cells) + f" | {row.get('train_minutes', '')} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attnviz.train", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, help="the model to train")
    parser.add_argument(
        "--register",
        action="store_true",
        help="register the finished models under --out as the model set --set, then exit",
    )
    parser.add_argument("--set", default="builtin", help="model set name for --register (default builtin)")
    parser.add_argument("--report", nargs="+", type=Path, metavar="RECORD",
                        help="print the top-1 accuracies of these records (<variant>.json) with Wilson 95 %% "
                             "intervals, then exit")
    parser.add_argument("--max-minutes", type=float, help="stop (resumable) after this many minutes")
    parser.add_argument("--data", type=Path, default=Path("data/scenes"))
    parser.add_argument("--out", type=Path, default=Path("weights/builtin"))
    parser.add_argument("--state", type=Path, help="resumable state file (default runs/<variant>/state.pt)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        default="v1",
        help="the named recipe (default v1, which trained the v1 set; v2 for the five-design v2 scenes)",
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        metavar="PX:SAMPLES",
        help="resolution phases in order, replacing the recipe's (v1: 96:40000 128:60000 224:10000)",
    )
    parser.add_argument(
        "--finetune",
        metavar="PX:SAMPLES:LR",
        help="the closing fine-tuning cycle (default 224:10000:0.0002; 'none' to skip)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-bf16", action="store_true", help="train in float32, without bf16 autocast")
    parser.add_argument("--force-bf16", action="store_true",
                        help="bf16 autocast also on a CPU without native bfloat16 (by default such a CPU trains in "
                             "float32: emulated bf16 is about 13x slower there)")
    parser.add_argument("--compile", action="store_true",
                        help="run the training steps through torch.compile (needs a C compiler; about 2 minutes "
                             "per resolution to compile, then faster steps for SE, ECA and CBAM)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--domain-scenes", type=int, nargs=3, default=(1500, 600, 30),
                        metavar=("TRAIN", "VAL", "PROBES"),
                        help="with --register: the training and validation scenes, and non-scene images per kind, "
                             "that the out-of-domain scorer is refitted on (default 1500 600 30)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.register:
        from attnviz.weights import default_weights_dir

        weights_dir = default_weights_dir()
        out = args.out.resolve()
        if not out.is_relative_to(weights_dir.resolve()):
            parser.error(f"--out must lie inside the weights folder {weights_dir}")
        registered = register(out, weights_dir, args.set)
        print("registered:", ", ".join(registered) or "nothing (no finished model)")
        if registered:  # the out-of-domain statistics belong to the weights: refit them for the set as it is now
            from attnviz.domain_fit import fit_set

            result = fit_set(args.set, weights_dir, *args.domain_scenes, progress=not args.quiet)
            print(f"out-of-domain scorer refitted: {result['chosen']} ({result['minutes']} min)")
        return 0
    if args.variant is None:
        parser.error("--variant is required unless --register is given")
    recipe = _recipe_from_args(args, parser)
    note = cpu_precision(recipe, args.device, args.force_bf16)
    if note:
        print(note, file=sys.stderr, flush=True)
    state = args.state or Path("runs") / args.variant / "state.pt"
    result = train(
        args.variant,
        args.data,
        args.out,
        state,
        recipe,
        torch.device(args.device),
        progress=not args.quiet,
        max_minutes=args.max_minutes,
        compile=args.compile,
    )
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
