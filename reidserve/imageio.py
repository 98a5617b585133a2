"""One way to turn a decoded image file into model pixels, for serving, training and evaluation alike (PIL and
numpy, never torch), so that the service embeds exactly what evaluation scored.

:func:`prepare` takes a PIL image as opened from a file and returns it

1. **upright**: the EXIF ``Orientation`` tag that cameras and phones write (values 2-8: mirrored and/or rotated) is
   applied, as every image viewer does;
2. **scaled to 8 bits**: 16-bit greyscale (PIL modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 16-bit PNGs) and
   PIL's 32-bit integer mode ``I`` (in which Pillow decodes 16-bit PGM/PPM files) hold samples on a 0..65535 scale
   and are mapped to 0..255 (``round(v / 257)``, values outside clipped); 32-bit float images (mode ``F``: PFM
   files) hold samples on a 0..1 scale and are mapped to 0..255 (``round(v * 255)``, clipped). PIL's own
   conversion would clip each of them at 255 instead -- a 16-bit image then becomes all white. 16-bit RGB(A) files
   are already decoded to 8 bits by PIL;
3. **in the model's colour mode**: ``RGB`` or ``L`` (PIL's conversion: alpha dropped, palettes expanded, ITU-R 601-2
   luma for L).

:func:`read_image` does the same for an image file on disk and returns a ``uint8`` array (``HxWx3`` for RGB).
"""

from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ROTATED_ORIENTATIONS", "orientation", "prepare", "read_image", "to_8bit", "upright"]

_ORIENTATION_TAG = 0x0112
ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# what a malformed EXIF block can raise; such an image is used as it is stored rather than refused
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error)


def orientation(im: Image.Image) -> int:
    """The EXIF orientation of ``im`` (1, upright, when it has none or an unreadable one)."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except _EXIF_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(im: Image.Image) -> Image.Image:
    """``im`` with its EXIF orientation applied (``im`` itself when it is upright)."""
    if orientation(im) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except _EXIF_ERRORS:
        return im


def to_8bit(im: Image.Image) -> Image.Image:
    """``im`` with 16-bit or 32-bit samples scaled to 8-bit ones (mode ``L``); other images unchanged (see the
    module docstring)."""
    if im.mode in _SIXTEEN_BIT:
        x = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(x / 257.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        x = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8), "L")
    return im


def prepare(im: Image.Image, mode: str) -> Image.Image:
    """``im`` (pixels loaded) upright, scaled to 8 bits and in ``mode`` (``RGB`` or ``L``): see the module
    docstring. Returns a new image or ``im`` itself when nothing had to change."""
    out = to_8bit(upright(im))
    return out if out.mode == mode else out.convert(mode)


def read_image(path: str | os.PathLike[str], mode: str = "RGB") -> np.ndarray:
    """The image file at ``path`` through :func:`prepare`, as a ``uint8`` array (``HxWx3`` for RGB, ``HxW`` for
    L). PIL's errors (missing file, unreadable data) propagate."""
    with Image.open(path) as im:
        im.load()
        return np.array(prepare(im, mode), dtype=np.uint8)
