"""The training recipe: schedule, resolution phases, augmentation and batches, as data; shared by every variant.

``attnviz.train`` runs it; the recipe a model was trained with is stored in its record (``<variant>.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Recipe:
    """Everything that defines a training run except the variant; shared by every variant."""

    seed: int = 0
    batch_size: int = 64
    # (resolution, samples) phases, run in order (progressive resizing): most of the budget at
    # low resolution, then the app's own resolution so the network sees it before the end.
    phases: list[tuple[int, int]] = field(default_factory=lambda: [(96, 40000), (128, 60000), (224, 10000)])
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.04
    label_smoothing: float = 0.1
    hflip: float = 0.5
    bf16: bool = True
    channels_last: bool = True
    # After the main cosine schedule: a second, short cosine cycle at the app's resolution
    # (resolution, samples, peak lr); the main run alone ended 1-2 points short at 224 px.
    finetune: tuple[int, int, float] | None = (224, 10000, 2e-4)
    # Per-image augmentation after resizing (v1 ran without): a zoom-in crop whose side is at
    # least crop_min of the image's, brightness / contrast / saturation each scaled by up to
    # 1 +- jitter, and a share of images turned grey, so that colour alone does not name a class.
    crop_min: float = 1.0
    jitter: float = 0.0
    grayscale: float = 0.0
    # Against learning one design's palette and shading (the unseen-design gap): a share of images whose
    # hue turns by a uniform random angle (in YIQ, keeping luma), a share whose RGB channels are permuted,
    # and MixStyle (Zhou et al., ICLR 2021): with this probability per batch, after layer1 and after
    # layer2, each image's per-channel feature mean and std are mixed with another image's of the batch
    # (weights ~ Beta(mixstyle_alpha, mixstyle_alpha)); training only, the model itself is unchanged.
    hue: float = 0.0
    channel_shuffle: float = 0.0
    mixstyle: float = 0.0
    mixstyle_alpha: float = 0.1

    @property
    def augments(self) -> bool:
        return self.crop_min < 1 or self.jitter > 0 or self.grayscale > 0 or self.hue > 0 or self.channel_shuffle > 0

    @property
    def main_steps(self) -> int:
        return sum(math.ceil(samples / self.batch_size) for _, samples in self.phases)

    @property
    def finetune_steps(self) -> int:
        return 0 if self.finetune is None else math.ceil(self.finetune[1] / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.main_steps + self.finetune_steps

    def resolution_at(self, step: int) -> int:
        end = 0
        for resolution, samples in self.phases:
            end += math.ceil(samples / self.batch_size)
            if step < end:
                return resolution
        return self.finetune[0] if self.finetune is not None else self.phases[-1][0]

    def lr_at(self, step: int) -> float:
        if step >= self.main_steps:  # the fine-tuning cycle: cosine from its own peak, no warm-up
            progress = (step - self.main_steps) / max(1, self.finetune_steps)
            return self.finetune[2] * 0.5 * (1 + math.cos(math.pi * progress))
        warmup = max(1, int(self.warmup_fraction * self.main_steps))
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.main_steps - warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))


# The recipes by name. v1 trained the shipped v1 set (one emoji design); v2 is for the
# five-design v2 scenes, where v1's recipe underfit (bench/results/v2_trial_resnet50.json: train
# accuracy still rising, test 74.7 %): about 2.7x the samples, most of them at low resolution,
# and the augmentation above against learning one design's colours.
RECIPES = {
    "v1": {},
    "v2": {
        "phases": [(96, 140000), (128, 150000), (224, 10000)],
        "crop_min": 0.85,
        "jitter": 0.2,
        "grayscale": 0.1,
    },
    # The set v2 is trained with v2 (scripts/train_v2.sh): within a point of v3 on test and the unseen design
    # for 72 % of v3's time, and each model has to train within one working session.
    # v2 lost 18 points of running accuracy when it went from 128 px to 224 px at the end, where the
    # cosine schedule had left too little learning rate to adapt (bench/results/v2_recipe2_resnet50.json,
    # steps 4500-4650). v3 climbs through 160 px, and zooms in further (crops down to 70 % of the side),
    # so that the objects' sizes in training span the sizes they have at 224 px; about the same cost.
    "v3": {
        "phases": [(96, 120000), (128, 100000), (160, 50000), (224, 10000)],
        "crop_min": 0.7,
        "jitter": 0.2,
        "grayscale": 0.1,
    },
    # v2 and v3 reached 92-93 % on test scenes but only 49-51 % on the unseen design: more steps and
    # resolution did not close the gap between designs. v4 spends fewer samples (about 70 % of v2's,
    # so that the four models fit about 8 CPU-hours) on style augmentation instead: hue turns, channel
    # permutations and MixStyle. Its first ResNet50 run stalled near chance (loss 2.50, running
    # accuracy 10 % at step 861, where v2 and v3 had 29-32 % by step 800) and was stopped. An 800-step
    # ablation without MixStyle stalled too (13.5 %, loss 2.46 at step 800): the colour changes stall it
    # (in these scenes a class's colour is shared across designs: a frog is green in all of them, so hue
    # turns take away a cue that transfers). Do not train the set with it.
    "v4": {
        "phases": [(96, 100000), (128, 80000), (224, 10000)],
        "crop_min": 0.7,
        "jitter": 0.2,
        "grayscale": 0.1,
        "hue": 0.5,
        "channel_shuffle": 0.2,
        "mixstyle": 0.5,
    },
    # v4 without the colour changes: MixStyle alone against the designs' shading and texture, v3's climb
    # through 160 px, about 75 % of v2's samples. Its ResNet50 run ended 15 points below v3 on test (78.2 %)
    # and 7 on the unseen design (42.2 %; bench/results/v2_recipe5_resnet50.json): not for the set either.
    "v5": {
        "phases": [(96, 100000), (128, 80000), (160, 20000), (224, 10000)],
        "crop_min": 0.7,
        "jitter": 0.2,
        "grayscale": 0.1,
        "mixstyle": 0.5,
    },
}


def recipe_named(name: str, **overrides) -> Recipe:
    """The recipe ``name`` of RECIPES, with ``overrides`` (e.g. batch_size) on top."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose from {', '.join(RECIPES)}")
    return Recipe(**{**RECIPES[name], **overrides})


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def augment(x: torch.Tensor, recipe: Recipe, step: int) -> torch.Tensor:
    """The recipe's per-image augmentation of a (B, 3, r, r) batch in [0, 1]; fixed by seed and step."""
    if not recipe.augments:
        return x
    draw = np.random.default_rng([recipe.seed, 2 * 10**6 + step]).integers(2**62)
    generator = torch.Generator().manual_seed(int(draw))
    b = x.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, *shape, generator=generator)

    if recipe.crop_min < 1:  # zoom in only (no upsampled blur beyond 1/crop_min, no border fill)
        side = uniform(recipe.crop_min, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = side
        theta[:, :, 2] = (1 - side)[:, None] * uniform(-1.0, 1.0, 2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if recipe.jitter > 0:
        j = recipe.jitter
        x = x * uniform(1 - j, 1 + j)[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * uniform(1 - j, 1 + j)[:, None, None, None] + mean
        grey = _grey(x)
        x = (x - grey) * uniform(1 - j, 1 + j)[:, None, None, None] + grey
        x = x.clamp(0, 1)
    if recipe.grayscale > 0:
        turn = torch.rand(b, generator=generator) < recipe.grayscale
        x = torch.where(turn[:, None, None, None], _grey(x), x)
    if recipe.hue > 0:
        turn = torch.rand(b, generator=generator) < recipe.hue
        angle = uniform(0.0, 2 * math.pi) * turn
        x = rotate_hue(x, angle)
    if recipe.channel_shuffle > 0:
        turn = torch.rand(b, generator=generator) < recipe.channel_shuffle
        order = torch.stack([torch.randperm(3, generator=generator) for _ in range(b)])
        order = torch.where(turn[:, None], order, torch.arange(3).expand(b, 3))
        x = torch.gather(x, 1, order[:, :, None, None].expand_as(x))
    return x


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1], each image's hue turned by ``angle[i]`` radians in YIQ (luma kept; greys
    stay grey), clamped back to [0, 1]."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(angle), 3, 3)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    transform = torch.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", transform, x).clamp(0, 1)


def mix_style(features: torch.Tensor, weights: torch.Tensor, partner: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MixStyle on (B, C, H, W) features: each image's per-channel mean and std become ``weights[i]`` of its
    own plus ``1 - weights[i]`` of image ``partner[i]``'s (statistics detached, as in the paper)."""
    x = features.float()  # statistics in float32 also under bf16 autocast
    mean = x.mean(dim=(2, 3), keepdim=True).detach()
    std = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt().detach()
    lam = weights.float()[:, None, None, None]
    mixed_mean = lam * mean + (1 - lam) * mean[partner]
    mixed_std = lam * std + (1 - lam) * std[partner]
    return ((x - mean) / std * mixed_std + mixed_mean).to(features.dtype)


def mix_style_draws(recipe: Recipe, step: int, batch: int,
                    sites: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """For each of ``sites`` places of step ``step``: (weights, partner) when MixStyle runs there, else None;
    fixed by the recipe's seed and the step."""
    rng = np.random.default_rng([recipe.seed, 3 * 10**6 + step])
    draws = []
    for _ in range(sites):
        if rng.random() >= recipe.mixstyle:
            draws.append(None)
            continue
        weights = torch.from_numpy(rng.beta(recipe.mixstyle_alpha, recipe.mixstyle_alpha, size=batch)).float()
        draws.append((weights, torch.from_numpy(rng.permutation(batch))))
    return draws


def normalise(
    images_uint8: torch.Tensor,
    resolution: int,
    recipe: Recipe | None = None,
    step: int = 0,
) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, r, r) float, ImageNet-normalised, resized with antialias;
    with ``recipe``, augmented by it (training) between resizing and normalising."""
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    if recipe is not None:
        x = augment(x, recipe, step)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of step ``step``: a fresh permutation each epoch, fixed by the seed."""
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(order[position * batch_size : (position + 1) * batch_size])


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as torch's oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_precision(recipe: Recipe, device: str, force_bf16: bool = False) -> str | None:
    """Train in float32 where bf16 would be emulated: on a CPU without native bfloat16 the recipe's bf16 autocast
    is about 13 times slower than float32 (bench/results/train_step_bf16_avx2.json: ResNet50, 96 px, batch 64,
    57.9 s against 4.3 s a step on two AVX2 cores). Turns ``recipe.bf16`` off and says so in a line; None when
    nothing changes."""
    if not recipe.bf16 or force_bf16 or device != "cpu" or native_bf16():
        return None
    recipe.bf16 = False
    return ("this CPU has no native bfloat16 (AVX512-BF16 or AMX): bf16 autocast would be emulated, about 13x "
            "slower than float32 on two AVX2 cores, so this run trains in float32 (--force-bf16 keeps bf16)")
