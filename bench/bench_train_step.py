"""Time per training step, eager against torch.compile, per model and resolution; and what a recipe costs.

    python bench/bench_train_step.py [--variants resnet50 se eca cbam] [--resolutions 96 128 160 224]
                                     [--runs 5] [--recipe v3] [--precision bf16|fp32]
                                     [--json bench/results/train_step.json]

One training step as ``attnviz.train`` runs it (batch 64 of random images, bf16 autocast, channels_last,
cross-entropy with label smoothing, AdamW), on a fresh model per variant: eager, then through
``torch.compile(model, dynamic=False)`` (``python -m attnviz.train --compile``). The first compiled step at a
resolution includes the compilation and is reported apart. ``cbam (amax)`` is CBAM with its max-pools written
as ``amax``, as before this benchmark: amax's backward spreads the gradient over ties with several full-size
passes, where ``max(dim).values`` scatters it to one index. From the medians it estimates the minutes of the
recipe's steps (its phases plus the fine-tuning cycle) for each variant and mode, compilations included.
``--precision fp32`` times the steps without bf16 autocast (``python -m attnviz.train --no-bf16``): on a CPU
without bf16 instructions (no AVX512_BF16 or AMX) bf16 is emulated and far slower than float32.
Run it on an idle machine (never beside training).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_explain import RESULTS, exit_on_sigterm, machine_info, ratio, write_results  # noqa: E402

from attnviz.attention.cbam import ChannelGate, SpatialGate  # noqa: E402
from attnviz.models import build_resnet50  # noqa: E402
from attnviz.recipe import recipe_named  # noqa: E402

AMAX = "cbam (amax)"


def _channel_amax(self, x: torch.Tensor) -> torch.Tensor:
    logits = 0
    if "avg" in self.pooling:
        logits = logits + self._mlp(x.mean(dim=(2, 3)))
    if "max" in self.pooling:
        logits = logits + self._mlp(x.amax(dim=(2, 3)))
    return torch.sigmoid(logits)


def _spatial_amax(self, x: torch.Tensor) -> torch.Tensor:
    pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
    return torch.sigmoid(self.bn(self.conv(pooled)))


def build(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_resnet50("cbam" if variant == AMAX else variant, num_classes=12)
    if variant == AMAX:
        for module in model.modules():
            if isinstance(module, ChannelGate):
                module.forward = _channel_amax.__get__(module)
            elif isinstance(module, SpatialGate):
                module.forward = _spatial_amax.__get__(module)
    return model.to(memory_format=torch.channels_last).train()


def step_times(variant: str, compiled: bool, resolutions: list[int], runs: int, batch: int,
               bf16: bool = True) -> dict:
    """Seconds of the first step (compilation included) and of ``runs`` further steps, per resolution."""
    model = build(variant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    forward = torch.compile(model, dynamic=False) if compiled else model
    generator = torch.Generator().manual_seed(0)
    out = {}
    for resolution in resolutions:
        x = torch.rand(batch, 3, resolution, resolution, generator=generator).contiguous(
            memory_format=torch.channels_last)
        y = torch.randint(0, 12, (batch,), generator=generator)
        times = []
        for _ in range(runs + 1):
            began = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(forward(x).float(), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - began)
        out[resolution] = {"first_s": round(times[0], 3), "median_s": round(statistics.median(times[1:]), 3),
                           "images_per_s": round(batch / statistics.median(times[1:]), 2)}
        mode = f"{'compiled' if compiled else 'eager'} {'bf16' if bf16 else 'fp32'}"
        print(f"{variant:12s} {mode:13s} {resolution:4d} px: first "
              f"{times[0]:7.2f} s, median {statistics.median(times[1:]):6.3f} s/step", flush=True)
    return out


def recipe_minutes(times: dict, recipe_name: str) -> float | None:
    """The recipe's steps at the measured per-step medians, plus each resolution's first step once."""
    recipe = recipe_named(recipe_name)
    steps: dict[int, int] = {}
    for step in range(recipe.total_steps):
        resolution = recipe.resolution_at(step)
        steps[resolution] = steps.get(resolution, 0) + 1
    if any(r not in times for r in steps):
        return None
    seconds = sum(n * times[r]["median_s"] + times[r]["first_s"] for r, n in steps.items())
    return round(seconds / 60, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["resnet50", "se", "eca", "cbam", AMAX])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[96, 128, 160, 224])
    parser.add_argument("--runs", type=int, default=5, help="timed steps per resolution after the first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--recipe", default="v3", help="the recipe whose cost is estimated (default v3)")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16: autocast as attnviz.train runs by default; fp32: as with --no-bf16")
    parser.add_argument("--json", default=str(RESULTS / "train_step.json"))
    args = parser.parse_args(argv)
    exit_on_sigterm()
    out = {"machine": machine_info(), "batch_size": args.batch_size, "recipe": args.recipe,
           "precision": args.precision, "variants": {}}
    for variant in args.variants:
        row = {}
        for mode in args.modes:
            times = step_times(variant, mode == "compiled", args.resolutions, args.runs, args.batch_size,
                               args.precision == "bf16")
            row[mode] = {"steps": {str(r): t for r, t in times.items()},
                         "recipe_minutes": recipe_minutes(times, args.recipe)}
        if "eager" in row and "compiled" in row:
            row["eager_over_compiled"] = {
                str(r): ratio(row["eager"]["steps"][str(r)]["median_s"], row["compiled"]["steps"][str(r)]["median_s"])
                for r in args.resolutions}
        out["variants"][variant] = row
    out["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(f"\nrecipe {args.recipe}, estimated minutes of training steps (compilations included):")
    for variant, row in out["variants"].items():
        cells = ", ".join(f"{mode} {row[mode]['recipe_minutes']}" for mode in args.modes)
        print(f"  {variant:12s} {cells}")
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
