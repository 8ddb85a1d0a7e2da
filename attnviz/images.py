"""Read, validate and preprocess an uploaded image.

Every problem a user can cause (not an image, truncated, empty, too large,
too small) becomes one ``AttnvizError`` line. Animated images give their first
frame, EXIF orientation is honoured, and any mode (CMYK, 16-bit, palette,
alpha, greyscale) becomes 8-bit RGB (alpha composited on white).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from attnviz.errors import AttnvizError
from attnviz.weights import Preprocessing

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000  # beyond this an image is refused before it is decoded
MIN_SIDE = 32

ImageSource = str | Path | bytes | Image.Image | np.ndarray


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    return "the image"


def load_image(source: ImageSource, max_bytes: int = MAX_FILE_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``source`` (path, bytes, PIL image or HxWx3 uint8 array) as a validated 8-bit RGB image."""
    name = _describe(source)
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.dtype != np.uint8:
            raise AttnvizError(f"{name}: expected an HxW or HxWx3 uint8 array, got {source.dtype} {source.shape}")
        image = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise AttnvizError(f"{name}: file not found")
            size = path.stat().st_size
            data = None
        else:
            data = bytes(source)
            size = len(data)
        if size == 0:
            raise AttnvizError(f"{name}: the file is empty (0 bytes); choose an image file", code="empty")
        if size > max_bytes:
            raise AttnvizError(
                f"{name}: the file is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit; "
                f"use a smaller image",
                code="file_too_big",
            )
        if data is None:
            data = Path(source).read_bytes()
        image = _open_bytes(data, name, max_pixels)
    return _to_rgb(image, name, max_pixels)


def _open_bytes(data: bytes, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_dimensions(image.size, name, max_pixels)
            image.seek(0)  # animated images: the first frame
            image.load()
    except AttnvizError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise AttnvizError(f"{name}: the image has too many pixels to decode safely; use a smaller image",
                           code="too_large") from None
    except UnidentifiedImageError:
        raise AttnvizError(f"{name}: not an image file Pillow can read; upload a PNG, JPEG, WebP, GIF or BMP",
                           code="not_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise AttnvizError(f"{name}: the image is truncated or corrupt ({exc}); upload an intact file",
                           code="corrupt") from None
    return image


def _check_dimensions(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise AttnvizError(
            f"{name}: {width}x{height} pixels is over the limit of {max_pixels / 1e6:.0f} megapixels; "
            f"use a smaller image",
            code="too_large",
        )
    if min(width, height) < MIN_SIDE:
        raise AttnvizError(
            f"{name}: {width}x{height} pixels is too small; the models need at least {MIN_SIDE}x{MIN_SIDE}",
            code="too_small",
        )


def _to_rgb(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    _check_dimensions(image.size, name, max_pixels)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block should not cost the user their image
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


@dataclass
class Prepared:
    """The one view all models of a set see: the cropped RGB pixels and the normalised tensor."""

    view: np.ndarray  # (crop, crop, 3) uint8: what the models see, and what overlays are drawn on
    tensor: torch.Tensor  # (1, 3, crop, crop) float32, normalised


def preprocess(image: Image.Image, preprocessing: Preprocessing) -> Prepared:
    """Resize the short side to ``resize`` (antialiased), centre-crop ``crop``, normalise."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    scale = preprocessing.resize / min(h, w)
    size = (max(preprocessing.crop, round(h * scale)), max(preprocessing.crop, round(w * scale)))
    mode = "bicubic" if preprocessing.interpolation == "bicubic" else "bilinear"
    x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).clamp_(0, 255)
    top = (size[0] - preprocessing.crop) // 2
    left = (size[1] - preprocessing.crop) // 2
    x = x[..., top : top + preprocessing.crop, left : left + preprocessing.crop]
    view = x.round().to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    pixels = torch.from_numpy(view).permute(2, 0, 1)[None].float() / 255
    tensor = (pixels - mean) / std
    return Prepared(view=view, tensor=tensor.contiguous())
