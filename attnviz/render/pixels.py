"""Pictures as arrays: colormaps through lookup tables, resizing, overlays, outlines.

Everything here is numpy and Pillow on uint8 RGB arrays, no matplotlib drawing: what is only an image (a
heatmap over the view, a strip of channel weights) costs a table lookup and a resize.

A colormap is looked up in its 256-entry table the way matplotlib indexes it (``floor(x * 256)``, 1.0 in the
last entry), so ``colorize`` gives exactly the colours of ``matplotlib.colormaps[name](x)`` (tested).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from PIL import Image

from attnviz.errors import AttnvizError

COLORMAPS = ("jet", "turbo", "inferno", "magma", "viridis", "plasma", "hot", "gray")
DIFFERENCE_COLORMAP = "RdBu_r"
ATTENTION_COLORMAP = "viridis"
LUT_SIZE = 256


def check_style(colormap: str, opacity: float) -> None:
    if colormap not in colormaps:
        raise AttnvizError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}", code="choice")
    if not 0.0 <= opacity <= 1.0:
        raise AttnvizError(f"opacity must be between 0 and 1, not {opacity}", code="choice")


@lru_cache(maxsize=64)
def lookup_table(colormap: str) -> np.ndarray:
    """The colormap's colours as a (256, 3) uint8 table (its own table resampled to 256 entries)."""
    cmap = colormaps[colormap].resampled(LUT_SIZE) if colormaps[colormap].N != LUT_SIZE else colormaps[colormap]
    rgba = cmap(np.arange(LUT_SIZE))
    table = (rgba[:, :3] * 255.0 + 0.5).astype(np.uint8)
    table.setflags(write=False)
    return table


def colour_rgb(colour: str) -> np.ndarray:
    """A matplotlib colour (name or hex) as three uint8 values."""
    return (np.asarray(to_rgb(colour)) * 255.0 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, colormap: str = "jet", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """A 2-D map through a colormap, as (H, W, 3) uint8: values at or below ``vmin`` get the first colour, at or
    above ``vmax`` the last."""
    scaled = (np.asarray(values, np.float32) - np.float32(vmin)) * np.float32(LUT_SIZE / max(vmax - vmin, 1e-12))
    index = np.clip(scaled, 0, LUT_SIZE - 1, out=scaled).astype(np.uint8)
    return np.take(lookup_table(colormap), index, axis=0)  # about 3x faster than fancy indexing here


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D float map resized bilinearly to (height, width)."""
    values = np.asarray(values, np.float32)
    if values.shape == tuple(size):
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 picture resized to (height, width): bilinear with Pillow's antialiasing when it shrinks."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def blend(under: np.ndarray, over: np.ndarray, opacity: float) -> np.ndarray:
    """``over`` laid on ``under`` with the given opacity, rounded to uint8."""
    mixed = (1.0 - opacity) * under.astype(np.float32) + np.float32(opacity) * over.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def overlay(view: np.ndarray, heatmap: np.ndarray, colormap: str = "jet", opacity: float = 0.5,
            vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """The heatmap, coloured and resized to the view, blended over it: (H, W, 3) uint8, no colorbar."""
    check_style(colormap, opacity)
    return blend(view, colorize(resize_map(heatmap, view.shape[:2]), colormap, vmin, vmax), opacity)


def grey(view: np.ndarray) -> np.ndarray:
    """The view in grey, lightened, as a quiet background for comparison maps."""
    luminance = view.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    lightened = 0.35 * 255.0 + 0.65 * luminance
    return np.repeat(lightened[..., None], 3, axis=2).astype(np.uint8)


def difference_overlay(view: np.ndarray, first: np.ndarray, second: np.ndarray, opacity: float = 0.7,
                       background: np.ndarray | None = None) -> np.ndarray:
    """``second`` minus ``first`` (two maps in [0, 1]) in diverging colours on a fixed -1..1 scale (blue: lower,
    red: higher), laid over the grey view: (H, W, 3) uint8, no colorbar. ``background``: the grey view, when the
    caller has it already at this size."""
    size = view.shape[:2]
    difference = resize_map(second, size) - resize_map(first, size)
    under = grey(view) if background is None else background
    return blend(under, colorize(difference, DIFFERENCE_COLORMAP, -1.0, 1.0), opacity)


def strip(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (rows, columns) float array shown in a box of (height, width) pixels: each pixel row takes the nearest
    row, each pixel column the mean of the columns it covers (or the nearest one where there are fewer columns
    than pixels), the way a heat-strip of many channels is read."""
    values = np.asarray(values, np.float32)
    height, width = size
    rows, columns = values.shape
    row_of = np.minimum((np.arange(height) + 0.5) * rows / height, rows - 1).astype(np.intp)
    if columns > width:
        edges = np.floor(np.arange(width) * columns / width).astype(np.intp)
        counts = np.diff(np.append(edges, columns))
        shown = np.add.reduceat(values, edges, axis=1) / counts
    else:
        shown = values[:, np.minimum((np.arange(width) + 0.5) * columns / width, columns - 1).astype(np.intp)]
    return shown[row_of]


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels within ``width`` of the mask's edge, inside or outside it (a closed line even where the
    mask touches the picture's border)."""
    padded = np.pad(mask, width, constant_values=False)
    grown, shrunk = padded.copy(), padded.copy()
    for _ in range(width):
        near = np.zeros_like(grown)
        near[1:] |= grown[:-1]
        near[:-1] |= grown[1:]
        near[:, 1:] |= grown[:, :-1]
        near[:, :-1] |= grown[:, 1:]
        grown |= near
        inner = shrunk.copy()
        inner[1:] &= shrunk[:-1]
        inner[:-1] &= shrunk[1:]
        inner[:, 1:] &= shrunk[:, :-1]
        inner[:, :-1] &= shrunk[:, 1:]
        shrunk = inner
    band = (grown & ~padded) | (padded & ~shrunk)
    return band[width:-width, width:-width] if width else band
