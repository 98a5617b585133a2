"""Image files to network-sized uint8 arrays: decoding (Pillow) and the standard augmentations, without torch.

A :class:`Transform` turns a decoded image into a ``[C, H, W]`` uint8 array at the network's input size:

* ``pad-crop`` (small inputs, e.g. 32x32): resized to the input size if it differs, then, for training, zero-padded
  by ``pad`` pixels on every side, randomly cropped back and randomly flipped;
* ``resized-crop`` (ImageNet-sized inputs): for training a random-resized crop (scale 0.08-1 of the area, aspect
  3/4-4/3, as in the ImageNet recipes) and a random flip; for evaluation a resize to 1/0.875 of the input size
  and a centre crop.

Every random choice comes from the ``numpy`` generator the caller passes (one per image, seeded by the caller), so
an image gets the same augmentation whichever loader process decodes it. Grey images converted to ``RGB`` repeat
their channel; colour images converted to ``L`` use Pillow's ITU-R 601 luma, which :func:`convert_array` applies
to arrays in memory bit for bit.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import PruneoptError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
STYLES = ("pad-crop", "resized-crop")
LARGE_INPUT = 96  # inputs at least this large (shorter side) get ImageNet-style augmentation
EVAL_CROP = 0.875  # resized-crop evaluation: resize to size / 0.875, centre crop


class BadImageError(PruneoptError):
    """An image file that cannot be decoded; the message names it."""


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def decode(path: str | os.PathLike[str]) -> Image.Image:
    """The image at ``path``, decoded in its own mode; :class:`BadImageError` naming the file when it cannot be
    read (missing, truncated, not an image, or a decompression bomb)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"{path}: cannot decode this image ({type(exc).__name__}: {exc})") from None


def open_image(path: str | os.PathLike[str], color: str) -> Image.Image:
    """The image at ``path``, decoded and converted to ``color`` (``RGB`` or ``L``)."""
    img = decode(path)
    return img if img.mode == color else img.convert(color)


def to_chw(img: Image.Image) -> np.ndarray:
    """A Pillow image as a contiguous uint8 ``[C, H, W]`` array."""
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


def convert_array(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 images ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` converted to ``channels`` (1: ``[N, H, W]``, 3:
    ``[N, H, W, 3]``), exactly as Pillow converts between ``L`` and ``RGB``."""
    grey = images.ndim == 3
    if channels == 1:
        if grey:
            return images
        rgb = images.astype(np.uint32)
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        return luma.astype(np.uint8)
    if channels == 3:
        return np.repeat(images[..., None], 3, axis=-1) if grey else images
    raise PruneoptError(f"images can be fed with 1 or 3 channels, not {channels}")


def pixel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (``[N, H, W]`` or ``[N, H, W, C]``) scaled to
    [0, 1]."""
    x = images.astype(np.float64) / 255.0
    x = x.reshape(-1, 1) if images.ndim == 3 else x.reshape(-1, images.shape[-1])
    return tuple(float(v) for v in x.mean(0)), tuple(max(float(v), 1e-3) for v in x.std(0))


def style_for(size: tuple[int, int]) -> str:
    """The augmentation style of an input size: ``resized-crop`` from ``LARGE_INPUT`` pixels up, else
    ``pad-crop``."""
    return "resized-crop" if min(size) >= LARGE_INPUT else "pad-crop"


@dataclass(frozen=True)
class Transform:
    """Decoded image -> ``[C, H, W]`` uint8 at ``size``; see the module docstring."""

    size: tuple[int, int]  # H, W
    color: str = "RGB"
    style: str = "pad-crop"
    pad: int = 4

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise PruneoptError(f"augmentation style must be one of {', '.join(STYLES)}, got {self.style!r}")

    def load(self, path: str, rng: np.random.Generator | None) -> np.ndarray:
        """Decode ``path`` and transform it: for training when ``rng`` is given, else for evaluation."""
        img = open_image(path, self.color)
        return self.train(img, rng) if rng is not None else self.eval(img)

    def eval(self, img: Image.Image) -> np.ndarray:
        h, w = self.size
        if self.style == "pad-crop":
            return to_chw(img if img.size == (w, h) else img.resize((w, h), Image.Resampling.BILINEAR))
        scale = max(h / img.height, w / img.width) / EVAL_CROP
        rw, rh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
        left, top = (rw - w) // 2, (rh - h) // 2
        resized = img.resize((rw, rh), Image.Resampling.BILINEAR)
        return to_chw(resized.crop((left, top, left + w, top + h)))

    def train(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        h, w = self.size
        if self.style == "pad-crop":
            arr = self.eval(img)
            p = self.pad
            padded = np.zeros((arr.shape[0], h + 2 * p, w + 2 * p), dtype=np.uint8)
            padded[:, p:p + h, p:p + w] = arr
            oy, ox = (int(v) for v in rng.integers(0, 2 * p + 1, size=2))
            out = padded[:, oy:oy + h, ox:ox + w]
        else:
            box = random_resized_box(img.width, img.height, rng)
            out = to_chw(img.resize((w, h), Image.Resampling.BILINEAR, box=box))
        if rng.random() < 0.5:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)


def random_resized_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop box ``(left, top, right, bottom)`` covering a random fraction ``scale`` of the area with a random
    aspect ratio (log-uniform in ``ratio``); after ten misses, the largest centred box within ``ratio``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            top, left = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
            return left, top, left + cw, top + ch
    aspect = width / height
    if aspect < ratio[0]:
        cw, ch = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        cw, ch = round(height * ratio[1]), height
    else:
        cw, ch = width, height
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch
