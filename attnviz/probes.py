"""Images that are not scenes, made here from a seed, to choose the out-of-domain scorer and its threshold.

Kinds: rendered text, noise (uniform, Gaussian, salt and pepper), flat colours, gradients (linear and radial),
line drawings, textures (stripes, checkerboards, gratings, blurred noise) and charts (matplotlib figures with
axes, labels and legends, like the plots of this app). None draws an emoji: they stand for what people upload
that is not a scene, and none of them is a photograph (photographs are kept for the report, never for choosing).

    from attnviz.probes import KINDS, probe_image
    image = probe_image("text", index=3)   # (224, 224, 3) uint8, a pure function of kind, index and seed
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 224
KINDS = ("text", "noise", "flat", "gradient", "lines", "texture", "chart")
WORDS = ("attention", "network", "model", "image", "layer", "class", "score", "upload", "the", "of", "and",
         "weights", "channel", "spatial", "map", "heat", "photo", "python", "train", "test", "value", "report")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _text(rng: np.random.Generator) -> np.ndarray:
    background = (255, 255, 255) if rng.random() < 0.6 else _colour(rng)
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(rng.integers(10, 28)))
    ink = (0, 0, 0) if background == (255, 255, 255) else _colour(rng)
    y = int(rng.integers(0, 12))
    while y < SIZE:
        line = " ".join(rng.choice(WORDS, int(rng.integers(2, 7))))
        draw.text((int(rng.integers(0, 20)), y), line, fill=ink, font=font)
        y += int(font.size * rng.uniform(1.2, 1.8))
    return np.asarray(image)


def _noise(rng: np.random.Generator) -> np.ndarray:
    kind = int(rng.integers(3))
    if kind == 0:
        return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    if kind == 1:
        return np.clip(rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    image = np.full((SIZE, SIZE, 3), rng.integers(0, 256), np.uint8)
    dots = rng.random((SIZE, SIZE)) < rng.uniform(0.02, 0.2)
    image[dots] = rng.choice([0, 255], (int(dots.sum()), 1))
    return image


def _flat(rng: np.random.Generator) -> np.ndarray:
    return np.broadcast_to(np.asarray(_colour(rng), np.uint8), (SIZE, SIZE, 3)).copy()


def _gradient(rng: np.random.Generator) -> np.ndarray:
    a, b = np.asarray(_colour(rng), float), np.asarray(_colour(rng), float)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / (t.max() - t.min())
    else:
        cy, cx = rng.uniform(0, 1, 2)
        t = np.clip(np.hypot(yy - cy, xx - cx) / rng.uniform(0.5, 1.2), 0, 1)
    return (a + (b - a) * t[..., None]).round().astype(np.uint8)


def _lines(rng: np.random.Generator) -> np.ndarray:
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    ink = (0, 0, 0) if rng.random() < 0.7 else _colour(rng)
    for _ in range(int(rng.integers(4, 20))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, SIZE, 4))
        box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
        width = int(rng.integers(1, 4))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.line((x0, y0, x1, y1), fill=ink, width=width)
        elif shape == 1:
            draw.ellipse(box, outline=ink, width=width)
        else:
            draw.rectangle(box, outline=ink, width=width)
    return np.asarray(image)


def _texture(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    a, b = np.asarray(_colour(rng), float), np.asarray(_colour(rng), float)
    kind = int(rng.integers(4))
    period = rng.uniform(6, 40)
    if kind == 0:  # stripes at an angle
        angle = rng.uniform(0, np.pi)
        t = ((np.cos(angle) * xx + np.sin(angle) * yy) // period) % 2
    elif kind == 1:  # checkerboard
        t = ((xx // period) + (yy // period)) % 2
    elif kind == 2:  # sinusoidal grating
        angle = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
    else:  # blurred noise: clouds
        noise = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
        t = np.asarray(noise.filter(ImageFilter.GaussianBlur(rng.uniform(3, 12))), float)
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
    return (a + (b - a) * t[..., None]).round().astype(np.uint8)


def _chart(rng: np.random.Generator) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.24, 2.24), dpi=100)
    axes = figure.add_subplot()
    n = int(rng.integers(3, 9))
    kind = int(rng.integers(3))
    if kind == 0:
        axes.bar(range(n), rng.uniform(0, 1, n), color=[np.asarray(_colour(rng)) / 255 for _ in range(n)])
    elif kind == 1:
        for i in range(int(rng.integers(1, 4))):
            axes.plot(np.cumsum(rng.normal(0, 1, 20)), label=f"model {i}")
        axes.legend(fontsize=6)
    else:
        axes.scatter(rng.normal(0, 1, 40), rng.normal(0, 1, 40), s=8)
    axes.set_title(" ".join(rng.choice(WORDS, 2)), fontsize=8)
    axes.tick_params(labelsize=6)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return np.asarray(Image.open(buffer).convert("RGB").resize((SIZE, SIZE)))


_MAKERS = {"text": _text, "noise": _noise, "flat": _flat, "gradient": _gradient, "lines": _lines,
           "texture": _texture, "chart": _chart}


def probe_image(kind: str, index: int, seed: int = 0) -> np.ndarray:
    """Non-scene image number ``index`` of ``kind``: (224, 224, 3) uint8, a pure function of its arguments."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown probe kind {kind!r}; choose one of {', '.join(KINDS)}")
    return _MAKERS[kind](np.random.default_rng([seed, KINDS.index(kind), index]))


def probe_images(per_kind: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``per_kind`` images of every kind, as (kind, image)."""
    return [(kind, probe_image(kind, i, seed)) for kind in KINDS for i in range(per_kind)]
