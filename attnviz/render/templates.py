"""Figures drawn from templates: matplotlib lays out and draws a figure's fixed parts once, a request paints only
its data.

Matplotlib spends most of a figure's draw on layout, text and resampling images, and the app's figures have a
layout that the request cannot change: the blocks of a model, the models compared, the view's size, the
colormap. So each layout is built once as a template (the fixed parts - axes, ticks, labels, colorbars, titles
- drawn and kept as pixels) and a request copies those pixels and paints its data into them with numpy: images
through lookup-table colormaps straight into their boxes, bars as filled rectangles, outlines from masks, and
the few numbers that change as text drawn by Pillow in matplotlib's own font. That costs a few milliseconds a
figure where a full draw costs tens.

Each figure also keeps its full matplotlib drawing (``update``: the request's data put into real artists):
``FULL_DRAW = True`` draws every figure that way, the reference the painted figures are tested against (same
layout, data in the same boxes and colours; text rendering and resampling differ by a few grey levels). A
figure without a ``paint`` (a line plot) is drawn from its template by blitting: only its data artists are
drawn over the kept background.

Drawing is serialised by one lock, so concurrent requests never share a half-drawn figure. No figure is
registered with pyplot.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from weakref import WeakKeyDictionary

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image, ImageDraw, ImageFont

from attnviz.render.pixels import colour_rgb

DPI = 100
FULL_DRAW = False  # True: every figure a full draw of a fresh figure (the reference in the tests)
MAX_TEMPLATES = 32  # layouts kept (each holds a figure and its pixels, about 1-2 MB)

DRAW_LOCK = threading.Lock()  # Agg text rendering shares font objects; drawing is quick next to the models


def _cjk_font() -> str | None:
    """The name of an installed CJK font (e.g. fonts-noto-cjk), or None."""
    for font in font_manager.fontManager.ttflist:
        if any(mark in font.name for mark in ("CJK", "Source Han", "WenQuanYi", "Noto Sans SC", "Droid Sans Fallback")):
            return font.name
    return None


def use_cjk_fallback() -> None:
    """Let figure labels (e.g. class names of an imported set) show Chinese when a CJK font is installed."""
    name = _cjk_font()
    if name and name not in matplotlib.rcParams["font.sans-serif"]:
        matplotlib.rcParams["font.sans-serif"] = [*matplotlib.rcParams["font.sans-serif"], name]


Build = Callable[[Figure], dict]
Update = Callable[[dict], tuple[list[Artist], list[Artist]]]  # -> artists to draw, artists to remove afterwards


@dataclass
class Box:
    """A rectangle of a figure's pixels: rows top..bottom, columns left..right (ends excluded)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def size(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def split(self, rows: int, columns: int) -> list[list[Box]]:
        """The box cut into a grid of rows x columns cells (edges rounded to whole pixels)."""
        ys = np.round(np.linspace(self.top, self.bottom, rows + 1)).astype(int)
        xs = np.round(np.linspace(self.left, self.right, columns + 1)).astype(int)
        return [[Box(int(ys[i]), int(xs[j]), int(ys[i + 1]), int(xs[j + 1])) for j in range(columns)]
                for i in range(rows)]


@lru_cache(maxsize=32)
def _font(path: str, size_px: float) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size_px)


_ANCHOR_X = {"left": "l", "center": "m", "right": "r"}
_ANCHOR_Y = {"top": "a", "center": "m", "center_baseline": "m", "baseline": "s", "bottom": "d"}


@dataclass
class Canvas:
    """The pixels of one request's figure: the template's fixed parts, then the request's data painted in."""

    figure: Figure
    pixels: np.ndarray  # (H, W, 3) uint8, this request's own copy
    texts: list[tuple[Text, str, str]] = field(default_factory=list)

    def _row(self, y: float) -> float:
        return self.pixels.shape[0] - y

    def box(self, artist: Artist, inset: int = 0) -> Box:
        """Where an artist (an image, a patch) sits, in pixels, clipped to its axes; ``inset`` pixels are left
        out at each edge (the frame the template drew around an image)."""
        bbox = artist.get_window_extent()
        if artist.axes is not None:
            clip = artist.axes.bbox
            bbox = bbox.from_extents(max(bbox.x0, clip.x0), max(bbox.y0, clip.y0), min(bbox.x1, clip.x1),
                                     min(bbox.y1, clip.y1))
        return Box(round(self._row(bbox.y1)) + inset, round(bbox.x0) + inset, round(self._row(bbox.y0)) - inset,
                   round(bbox.x1) - inset)

    def data_box(self, ax, x0: float, y0: float, x1: float, y1: float) -> Box:
        """The pixels of a rectangle given in an axes' data coordinates."""
        (px0, py0), (px1, py1) = ax.transData.transform([(x0, y0), (x1, y1)])
        return Box(round(self._row(max(py0, py1))), round(min(px0, px1)), round(self._row(min(py0, py1))),
                   round(max(px0, px1)))

    def paste(self, box: Box, image: np.ndarray) -> None:
        """Put an (h, w, 3) picture of the box's size into the box."""
        self.pixels[box.top:box.bottom, box.left:box.right] = image

    def fill(self, box: Box, colour: str | np.ndarray) -> None:
        self.pixels[box.top:box.bottom, box.left:box.right] = colour_rgb(colour) if isinstance(colour, str) else colour

    def text(self, artist: Text, string: str, colour: str | None = None) -> None:
        """Write ``string`` where the template's text artist stands, with its font, size and alignment."""
        self.texts.append((artist, string, colour or artist.get_color()))

    def _draw_texts(self) -> None:
        """Write the texts as Pillow's ``ImageDraw.text`` would, to the bit, from cached glyph masks: a figure's
        numbers repeat between requests, and rendering them again cost most of a painted figure's time."""
        for artist, string, colour in self.texts:
            x, y, path, size_px, anchor = _place(artist, self.pixels.shape[0], self.figure.dpi)
            (start_x, whole_x), (start_y, whole_y) = math.modf(x), math.modf(y)  # as Pillow splits them
            mask, left, top = _text_mask(string, path, size_px, anchor, start_x, start_y)
            left, top = int(whole_x) + left, int(whole_y) + top
            _blend_mask(self.pixels, mask, left, top, colour_rgb(colour))
        self.texts.clear()


def _place(artist: Text, height: int, dpi: float) -> tuple[float, float, str, float, str]:
    """Where and how a template's text artist writes: its anchor point in pixels (x right, y down), font file,
    size in pixels and Pillow anchor. Templates never move their artists, so this is kept per artist."""
    place = _PLACES.get(artist)
    if place is None:
        x, y = artist.get_transform().transform(artist.get_position())
        path = font_manager.findfont(artist.get_fontproperties())
        size_px = artist.get_fontsize() * dpi / 72.0
        anchor = _ANCHOR_X.get(artist.get_horizontalalignment(), "l") + \
            _ANCHOR_Y.get(artist.get_verticalalignment(), "s")
        place = _PLACES[artist] = (float(x), float(height - y), path, size_px, anchor)
    return place


_PLACES: WeakKeyDictionary[Text, tuple] = WeakKeyDictionary()


@lru_cache(maxsize=4096)
def _text_mask(string: str, path: str, size_px: float, anchor: str, start_x: float, start_y: float
               ) -> tuple[np.ndarray, int, int]:
    """A text's coverage (0-255) as Pillow renders it at this sub-pixel start, and where its top-left corner
    goes relative to the whole-pixel anchor point."""
    font = _font(path, size_px)
    glyphs, (left, top) = font.getmask2(string, "L", anchor=anchor, start=(start_x, start_y))
    width, height = glyphs.size
    # drawn alone with white ink on a black page of its own, at the same sub-pixel start, the text's pixels are
    # its coverage; the page leaves room for a mask that starts left of or above the anchor point
    x, y = max(0, -left), max(0, -top)
    page = Image.new("L", (x + left + width, y + top + height), 0)
    ImageDraw.Draw(page).text((x + start_x, y + start_y), string, fill=255, font=font, anchor=anchor)
    mask = np.asarray(page)[y + top:y + top + height, x + left:x + left + width]
    mask.setflags(write=False)
    return mask, left, top


def _blend_mask(pixels: np.ndarray, mask: np.ndarray, left: int, top: int, ink: np.ndarray) -> None:
    """Ink laid over the pixels (in place) through a coverage mask, with Pillow's blend and rounding: each value
    becomes ``(under * (255 - cover) + ink * cover) / 255``, the division rounded as Pillow's ``DIV255``."""
    height, width = pixels.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mask.shape[0], height), min(left + mask.shape[1], width)
    if y0 >= y1 or x0 >= x1:
        return
    cover = mask[y0 - top:y1 - top, x0 - left:x1 - left, None].astype(np.uint32)
    under = pixels[y0:y1, x0:x1]
    mixed = under * (255 - cover) + ink.astype(np.uint32) * cover + 128
    under[...] = ((mixed >> 8) + mixed) >> 8


Paint = Callable[[dict, Canvas], None]


@dataclass
class _Template:
    """A figure drawn once without its data artists, and that drawing kept."""

    figure: Figure
    parts: dict
    canvas: FigureCanvasAgg
    background: object  # what blitting restores
    pixels: np.ndarray  # the same drawing as RGB, what painting starts from


_TEMPLATES: OrderedDict[tuple, _Template] = OrderedDict()


def animated(parts: dict) -> Iterator[Artist]:
    for value in parts.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Artist):
                yield item


def frame(ax) -> list[Artist]:
    """An axes' visible spines: a full draw puts them over images and bars (zorder 2.5)."""
    return [spine for spine in ax.spines.values() if spine.get_visible()]


def _new_figure(size: tuple[float, float], build: Build, frames_animated: bool) -> tuple[Figure, dict, FigureCanvasAgg]:
    """Build a figure, lay it out once (constrained layout) and freeze that layout."""
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    parts = build(figure)
    data = list(animated(parts))
    if frames_animated:
        # Blitting draws the frames of axes that show data with the data: drawn once more over the background,
        # their antialiased edges would come out darker than in a full draw.
        data += [spine for ax in {a.axes for a in data if a.axes is not None} for spine in frame(ax)]
    for artist in data:
        artist.set_animated(True)
    canvas.draw()
    figure.set_layout_engine("none")  # the positions stay as laid out, whatever the data drawn later
    return figure, parts, canvas


def _full_draw(size: tuple[float, float], build: Build, update: Update) -> np.ndarray:
    figure, parts, canvas = _new_figure(size, build, frames_animated=True)
    try:
        draw, temporary = update(parts)
        for artist in [*animated(parts), *draw, *temporary]:
            artist.set_animated(False)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
    finally:
        figure.clear()


def _template(key: tuple, size: tuple[float, float], build: Build, painted: bool) -> _Template:
    key = (*key, painted)
    template = _TEMPLATES.get(key)
    if template is None:
        figure, parts, canvas = _new_figure(size, build, frames_animated=not painted)
        pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        template = _Template(figure, parts, canvas, canvas.copy_from_bbox(figure.bbox), pixels)
        _TEMPLATES[key] = template
        while len(_TEMPLATES) > MAX_TEMPLATES:
            _TEMPLATES.popitem(last=False)[1].figure.clear()
    _TEMPLATES.move_to_end(key)
    return template


def draw(key: tuple, size: tuple[float, float], build: Build, update: Update, paint: Paint | None = None
         ) -> np.ndarray:
    """The pixels of the figure of layout ``key`` with the request's data.

    ``build(figure)`` makes the figure and returns the artists that show data (``parts``: left out of the
    template's drawing); ``update(parts)`` puts the request's data into those artists for a full matplotlib draw
    and returns the artists to draw, in order, and those it made only for this request; ``paint(parts, canvas)``
    paints the same data into a copy of the template's pixels. Without ``paint`` the figure is blitted.
    """
    with DRAW_LOCK:
        if FULL_DRAW:
            return _full_draw(size, build, update)
        template = _template(key, size, build, painted=paint is not None)
        if paint is not None:
            canvas = Canvas(template.figure, template.pixels.copy())
            paint(template.parts, canvas)
            canvas._draw_texts()
            return canvas.pixels
        drawn, temporary = update(template.parts)
        try:
            template.canvas.restore_region(template.background)
            for artist in drawn:
                template.figure.draw_artist(artist)
            return np.asarray(template.canvas.buffer_rgba())[..., :3].copy()
        finally:
            for artist in temporary:
                artist.remove()


def clear_templates() -> None:
    """Forget every figure template (they are rebuilt on the next request)."""
    with DRAW_LOCK:
        while _TEMPLATES:
            _TEMPLATES.popitem()[1].figure.clear()


def templates_kept() -> int:
    return len(_TEMPLATES)
