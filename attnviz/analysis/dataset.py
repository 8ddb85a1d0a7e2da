"""A folder of the user's own images, each with a mask PNG of its object: the items the analysis measures instead
of the generated scenes (``python -m attnviz.analyze --images DIR --masks DIR``).

Every image file under the images folder (recursive; ``attnviz.batch.IMAGE_EXTENSIONS``) is paired with the PNG of
the same relative path and stem under the masks folder (``a/x.jpg`` -> ``a/x.png``). A mask may have any mode
(binary, greyscale, palette, colour): a nonzero value (index, grey level or any colour channel; alpha ignored) is
the object. Images are read with the app's own loading (``attnviz.images.load_image``) and go through the set's
resize and centre crop like the app's; masks go through the same resize and crop (``image_items``).

A photo's EXIF orientation (a phone's "rotate on display") turns the image as the app shows it; its mask is taken
as drawn on the image as shown. A mask of the stored pixels' size that the orientation would turn (90 or 270
degrees, a non-square image) is turned the same way. Where both fit (a square photo, or a half turn or mirror,
which keep the size) the mask cannot tell: it is taken as drawn on the image as shown, a note says how many such
images there are, and ``--masks-on-stored-pixels`` turns their masks with their images instead.

A pair that cannot be measured is skipped with one line naming the file and what to do: no mask, an unreadable
image or mask, a mask of another size than the image, a mask without object pixels, an object entirely outside
the model's view (the centre crop), or (with ``--labels``) no usable class for it.

Images are measured in path order. Without ``--threshold`` a share of them (``VAL_SHARE``, at most ``--val``),
drawn at random with ``--seed``, is held out to choose the IoU threshold, as the val scenes do for the scenes, and
is not measured: the threshold is never chosen on the images it scores. ``--test N`` measures a random N of the
others; the sections that take "the first" test scenes (faithfulness, Score-CAM, knock-out, sanity) take a random
subset of the measured images here (nested: a smaller count takes a part of a larger one's), so that a folder
sorted by class does not give them its first class only.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from attnviz.analysis.config import AnalysisConfig
from attnviz.analysis.items import Item, image_items
from attnviz.batch import IMAGE_EXTENSIONS
from attnviz.errors import AttnvizError
from attnviz.images import load_image
from attnviz.localisation import view_mask
from attnviz.settings import resolve_target
from attnviz.weights import Preprocessing

MASK_SUFFIX = ".png"
VAL_SHARE = 0.2  # of the usable images, held out to choose the IoU threshold when --threshold is not given
HELD_OUT_SEED, SUBSET_SEED, LIMIT_SEED = 11, 12, 13  # streams of --seed: held-out images, section subsets, --test
SCENE_ONLY = {
    "unseen": "scene-only: it measures glyphs the models never saw in training, and a folder of images has no "
              "such split",
    "pairs": "scene-only: it needs two objects with a mask each and one CAM per class, and a folder gives one "
             "mask per image",
}


@dataclass
class Pair:
    """One usable image of the folder, its mask and the class its CAMs explain."""

    image: Path
    mask: Path
    name: str  # the image's path under the images folder, with "/"
    target: int | None  # None: each model's own top-1
    orientation: int = 1  # the image's EXIF orientation, applied to the mask too (1: the mask is used as it is)


@dataclass
class Found:
    """What a folder holds: the usable pairs in path order, the files skipped (each with its reason) and notes."""

    files: int  # image files found
    pairs: list[Pair] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image's name, reason and what to do)
    notes: list[str] = field(default_factory=list)  # lines about the labels file


def read_mask(path: Path) -> np.ndarray:
    """The mask PNG as an (H, W) bool array: nonzero is the object, in any mode (the index of a palette image, the
    grey level, any colour channel; an alpha channel is ignored). An unreadable file raises ``AttnvizError``."""
    try:
        with Image.open(path) as image:
            image.load()
            values = np.asarray(image)
            mode = image.mode
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise AttnvizError(f"{path}: not a PNG Pillow can read ({exc})") from None
    if values.ndim == 3:
        if mode.endswith(("A", "a")):
            values = values[..., :-1]
        return (values != 0).any(axis=-1)
    return values != 0


# How an EXIF orientation turns the stored pixels for display (PIL's ImageOps.exif_transpose does the same)
ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}
EXIF_ORIENTATION = 0x0112


def exif_orientation(path: Path) -> int:
    """The image file's EXIF orientation (1, as stored, when it has none or it cannot be read)."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the image is loaded unturned as well (attnviz.images)
        return 1
    return value if value in ORIENT else 1


def _turned(values: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W) bool mask turned as an image of that EXIF orientation is for display (1: as it is)."""
    return values if orientation == 1 else np.asarray(Image.fromarray(values).transpose(ORIENT[orientation]))


def pair_mask(pair: Pair) -> np.ndarray:
    """The pair's mask as (H, W) bool, turned as its image is when the mask was drawn on the stored pixels."""
    return _turned(read_mask(pair.mask), pair.orientation)


def read_labels(path: Path) -> dict[str, tuple[int, str]]:
    """``file,class`` rows (an optional header ``file,class``): the image's path under the images folder, with or
    without its extension -> (row number, class as written); a file named twice keeps its first row."""
    if not path.is_file():
        raise AttnvizError(f"--labels {path}: no such file; give a CSV of 'file,class' rows")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AttnvizError(f"--labels {path}: cannot be read as a UTF-8 CSV ({exc})") from None
    labels: dict[str, tuple[int, str]] = {}
    for number, row in enumerate(rows, 1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if number == 1 and [c.lower() for c in cells[:2]] == ["file", "class"]:
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise AttnvizError(f"--labels {path} row {number}: expected 'file,class', got {','.join(row)!r}")
        labels.setdefault(_key(cells[0]), (number, cells[1]))
    return labels


def _key(name: str) -> str:
    return re.sub(r"^(\./)+", "", name.replace("\\", "/"))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def find_pairs(images: Path, masks: Path, preprocessing: Preprocessing, classes: list[str],
               labels: Path | None = None, exclude: tuple[Path, ...] = (), stored_pixels: bool = False) -> Found:
    """Every image file under ``images`` (not under ``masks`` or ``exclude``), checked with its mask: the usable
    pairs and, for each other image, why it is skipped and what to do. ``stored_pixels``: a mask that fits both
    an EXIF-turned image and its stored pixels was drawn on the stored pixels (see the module's docstring)."""
    for option, folder in (("--images", images), ("--masks", masks)):
        if not folder.is_dir():
            raise AttnvizError(f"{option} {folder}: no such folder")
    root, mask_root = images.resolve(), masks.resolve()
    if root == mask_root:
        raise AttnvizError("--masks must be another folder than --images: a mask x.png beside x.jpg would be "
                           "taken for an image")
    left_out = [mask_root, *(p.resolve() for p in exclude)]
    files = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(_inside(p.resolve(), folder) for folder in left_out))
    table = read_labels(labels) if labels else None
    found = Found(files=len(files))
    used: set[str] = set()
    either: list[str] = []  # images with an orientation whose masks fit both ways
    for path in files:
        name = path.relative_to(images).as_posix()
        mask = masks / path.relative_to(images).with_suffix(MASK_SUFFIX)
        row = None
        if table is not None:
            key = name if name in table else name.rsplit(".", 1)[0]
            row = table.get(key)
            if row is None:
                found.skipped.append((name, f"no row for it in {labels}; add a row '{name},CLASS' or leave "
                                            f"--labels out"))
                continue
            used.add(key)
        reason, target, orientation, fits_both = _check(path, mask, preprocessing, classes, row, labels,
                                                        stored_pixels)
        if reason:
            found.skipped.append((name, reason))
            continue
        either += [name] if fits_both else []
        found.pairs.append(Pair(path, mask, name, target, orientation))
    if either:
        how = ("turned with their images (--masks-on-stored-pixels)" if stored_pixels else
               "taken as drawn on the images as shown; add --masks-on-stored-pixels if they were drawn on the "
               "files' stored pixels")
        found.notes.append(f"{len(either)} image(s) are turned or mirrored on display by their EXIF orientation and "
                           f"their masks fit either way (first: {either[0]}); the masks are {how}")
    if table is not None:
        unused = [k for k in table if k not in used]
        if unused:
            found.notes.append(f"{labels}: {len(unused)} row(s) name no image under {images} (first: {unused[0]!r}); "
                               f"a row's file is the image's path under --images, with or without its extension")
    return found


def _skipped(reason: str) -> tuple[str, None, int, bool]:
    return reason, None, 1, False


def _check(path: Path, mask: Path, preprocessing: Preprocessing, classes: list[str], row: tuple[int, str] | None,
           labels: Path | None, stored_pixels: bool) -> tuple[str | None, int | None, int, bool]:
    """(why the pair cannot be measured and what to do, or None; the class index its CAMs explain, or None; the
    EXIF orientation to turn the mask with, 1 for none; whether the mask fits the image both turned and not)."""
    target = None
    if row is not None:
        try:
            target = resolve_target(row[1], classes)
        except AttnvizError as exc:
            return _skipped(f"{labels} row {row[0]}: {exc}")
    if not mask.is_file():
        return _skipped(f"no mask {mask}; add a PNG of the image's size there (nonzero = object) or move the image "
                        f"out of the folder")
    try:
        image = load_image(path)
    except AttnvizError as exc:
        return _skipped(str(exc).removeprefix(f"{path.name}: "))
    try:
        values = read_mask(mask)
    except AttnvizError as exc:
        return _skipped(f"its mask {exc}; replace it with a PNG of the image's size (nonzero = object)")
    fit = _mask_orientation(path, values.shape, (image.height, image.width))
    if fit is None:
        return _skipped(f"its mask {mask} is {values.shape[1]}x{values.shape[0]} px, the image {image.width}x"
                        f"{image.height} px (as shown, after its EXIF orientation); give a mask of the image's size")
    orientation, fits_both = fit
    if fits_both and not stored_pixels:  # as drawn on the image as shown, unless told otherwise
        orientation = 1
    if not values.any():
        return _skipped(f"its mask {mask} has no nonzero pixel; mark the object with nonzero values or remove the "
                        f"image")
    if not view_mask(_turned(values, orientation), preprocessing).any():
        return _skipped(f"the object of {mask} lies outside the model's view (short side resized to "
                        f"{preprocessing.resize} px, then the centre {preprocessing.crop}x{preprocessing.crop} px); "
                        f"crop the image around the object or remove it")
    return None, target, orientation, fits_both


def _mask_orientation(path: Path, mask: tuple[int, int], shown: tuple[int, int]) -> tuple[int, bool] | None:
    """How the mask is turned to fit the image as shown (1: not at all; the image's EXIF orientation when the mask
    has the stored pixels' shape), and whether it would fit untouched as well; None when it fits neither way."""
    orientation = exif_orientation(path) if mask in (shown, shown[::-1]) else 1
    stored = shown[::-1] if orientation in (5, 6, 7, 8) else shown
    if orientation == 1:
        return (1, False) if mask == shown else None
    if mask == shown:
        return (orientation, True) if stored == shown else (1, False)
    return (orientation, False) if mask == stored else None


class FolderSource:
    """The usable pairs of a folder as the analysis' items: split "val" the held-out images that choose the IoU
    threshold, split "test" the measured ones, both in path order (``SceneSource`` is the scenes' counterpart)."""

    kind = "folder"

    def __init__(self, images: Path, masks: Path, labels: Path | None, found: Found, preprocessing: Preprocessing,
                 config: AnalysisConfig, val_share: float = VAL_SHARE, limit: int | None = None) -> None:
        if not found.pairs:
            raise AttnvizError(f"no usable image with a mask in {images} ({found.files} image file(s) found"
                               + (", each skipped: see the lines above" if found.files else
                                  f"; looked for {', '.join(IMAGE_EXTENSIONS)}") + ")")
        if not 0 < val_share < 1:
            raise AttnvizError("--val-share must be between 0 and 1")
        if limit is not None and limit < 1:
            raise AttnvizError("--test must be at least 1")
        self.images, self.masks, self.labels, self.found = images, masks, labels, found
        self.preprocessing, self.seed = preprocessing, config.seed
        self.top1 = labels is None
        self.threshold_given = config.threshold is not None
        self.val_share = None if self.threshold_given else val_share
        self.limit = limit
        n = len(found.pairs)
        held = 0 if self.threshold_given else min(config.val, max(1, round(val_share * n)))
        if held >= n:
            raise AttnvizError(f"{n} usable image(s): too few to hold some out for choosing the IoU threshold and "
                               f"measure the rest; give --threshold (e.g. 0.5) to measure them all at a fixed one")
        order = np.random.default_rng([config.seed, HELD_OUT_SEED]).permutation(n)
        rest = order[held:]
        if limit is not None and limit < len(rest):
            rest = np.random.default_rng([config.seed, LIMIT_SEED]).permutation(rest)[:limit]
        self.splits = {"val": [found.pairs[i] for i in sorted(order[:held])],
                       "test": [found.pairs[i] for i in sorted(rest)]}
        self.subset_order = np.random.default_rng([config.seed, SUBSET_SEED]).permutation(len(self.splits["test"]))

    @property
    def target(self) -> str:
        if not self.top1:
            return f"the class given for each image in {self.labels}"
        return ("each model's own top-1 class (no --labels): the models may explain different classes of one image, "
                "and not necessarily the masked object's; accuracy is not measured (--labels FILE gives both)")

    def items(self, split: str, index: int) -> list[Item]:
        pair = self.splits[split][index]
        return image_items(split, index, load_image(pair.image), [pair_mask(pair)], [pair.target],
                           self.preprocessing)

    def items_per_scene(self, split: str) -> int:
        """One CAM per image (one mask each)."""
        return 1

    def sample(self, count: int) -> list[int]:
        """The test positions of a section that measures ``count`` of them: a random subset (all when ``count``
        reaches the number measured), in path order; a smaller count's is a part of a larger one's."""
        return sorted(int(i) for i in self.subset_order[:count])

    def skipped_parts(self, config: AnalysisConfig) -> dict[str, str]:
        return dict(SCENE_ONLY)

    def samples(self) -> dict:
        held = len(self.splits["val"])
        return {"note": f"the usable images of {self.images} in path order"
                        + (f"; {held} of them held out at random (seed {self.seed}) to choose the IoU threshold and "
                           f"not measured" if held else "")
                        + (f"; a random {self.limit} of the others measured (--test)" if self.limit else "")
                        + f"; faithfulness, Score-CAM, knock-out and sanity on a random subset of the measured ones "
                          f"(seed {self.seed}; all of them when the count reaches theirs)"}

    def threshold_sample(self, count: int) -> str:
        return f"{count} of the folder's images, held out at random (seed {self.seed}) and not measured"

    def describe(self) -> dict:
        """The result's "data": which folder, how many images, which were held out, measured and skipped."""
        return {
            "kind": "folder",
            "images": str(self.images.resolve()),
            "masks": str(self.masks.resolve()),
            "labels": None if self.labels is None else str(self.labels.resolve()),
            "files": self.found.files,
            "usable": len(self.found.pairs),
            "held_out": [p.name for p in self.splits["val"]],
            "measured": [p.name for p in self.splits["test"]],
            "skipped": [{"file": name, "reason": reason} for name, reason in self.found.skipped],
            "masks_turned": [p.name for p in self.found.pairs if p.orientation != 1],
            "val_share": self.val_share,
            "limit": self.limit,
            "seed": self.seed,
        }

    def config(self, config: AnalysisConfig) -> AnalysisConfig:
        """``config`` with this folder's sample: val the held-out images, test the measured ones, no scene-only
        split, and the sections' counts at most the images measured."""
        measured = len(self.splits["test"])
        return replace(config, val=len(self.splits["val"]), test=measured, unseen=0, pairs=0,
                       faithfulness=min(config.faithfulness, measured), scorecam=min(config.scorecam, measured),
                       knockout_scenes=min(config.knockout_scenes, measured),
                       sanity_scenes=min(config.sanity_scenes, measured))


def folder_name(images: Path) -> str:
    """The images folder's name as an output folder's part (``analysis-data-<name>``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", images.resolve().name).strip("._") or "images"
