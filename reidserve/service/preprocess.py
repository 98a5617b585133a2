"""Image decoding and preprocessing for the service, in numpy and PIL (never torch).

:func:`decode_image` turns the bytes a client sent into a PIL image at the model's input size, refusing what
could hurt the server: formats other than JPEG, PNG, WebP, BMP, GIF and PPM; images whose header announces more
than ``max_pixels`` pixels (checked *before* any pixel is decoded, so a decompression bomb costs nothing); empty,
truncated or corrupt data. Every refusal is an :class:`ImageError` with a message for the client (the service
answers 413 for too many pixels, 422 otherwise).

A decoded image is made upright (EXIF orientation), scaled to 8 bits (16-bit and 32-bit images) and converted to
the model's colour mode (``RGB`` or ``L``) by :func:`reidserve.imageio.prepare` -- the function the training and
evaluation readers share, so that both see the same pixels -- then resized (bilinear) to the model's input
height x width (as ``reidserve.data.transforms.resize`` does for training). :func:`to_batch` then applies
``pruneopt export``'s metadata (:meth:`export.metadata.ExportMetadata.preprocess`: ``(pixel * pixel_scale - mean) /
std`` per channel, NCHW).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from export.metadata import ExportMetadata

from ..errors import ReidserveError
from ..imageio import prepare

__all__ = ["ALLOWED_FORMATS", "ImageError", "ImageTooLarge", "decode_base64", "decode_image", "to_batch"]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "PPM")
_DATA_URL = re.compile(r"^data:[A-Za-z0-9.+/-]*(;[A-Za-z0-9=.+-]*)*;base64,")


class ImageError(ReidserveError):
    """An image the service cannot use; the message says why."""

    status = 422


class ImageTooLarge(ImageError):
    """An image with more pixels than the configured limit (a possible decompression bomb)."""

    status = 413


def decode_base64(text: str, what: str = "image") -> bytes:
    """Standard or URL-safe base64, with or without padding, optionally as a ``data:...;base64,`` URL."""
    s = _DATA_URL.sub("", text.strip(), count=1)
    s = "".join(s.split())
    if not s:
        raise ImageError(f"{what} is empty")
    if "-" in s or "_" in s:
        s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{what} is not valid base64 (send the file bytes base64-encoded, or use multipart "
                         "upload)") from None


def decode_image(data: bytes, size: tuple[int, int], mode: str, *, max_pixels: int,
                 what: str = "image") -> Image.Image:
    """Decode ``data`` and return it in ``mode`` (``RGB`` or ``L``) resized to ``size = (height, width)``."""
    if not data:
        raise ImageError(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            # PIL warns above Image.MAX_IMAGE_PIXELS (our check below says more) and raises above twice that
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{what} has far more pixels than the limit of {max_pixels}; send person crops, not "
                            "whole frames") from None
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not a JPEG, PNG, WebP, BMP, GIF or PPM image ({len(data)} bytes starting "
                         f"{data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{what} cannot be read: {exc}") from None
    with im:
        w, h = im.size
        if w < 1 or h < 1:
            raise ImageError(f"{what} is {w}x{h} pixels")
        if w * h > max_pixels:
            raise ImageTooLarge(f"{what} is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}; send person "
                                "crops, not whole frames")
        th, tw = size
        try:
            # no JPEG draft (DCT-domain) downscale: evaluation decodes every image fully, and so must the service
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
            out = prepare(im, mode)
            if out is im:
                out = im.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLarge(f"{what} has more pixels than the limit of {max_pixels}") from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise ImageError(f"{what} is truncated or corrupt ({exc})") from None
    if out.size != (tw, th):
        out = out.resize((tw, th), Image.Resampling.BILINEAR)
    return out


def to_batch(images: list[Image.Image], meta: ExportMetadata) -> np.ndarray:
    """PIL images already at the input size and in the model's mode -> the model's ``float32`` NCHW input."""
    arrays = [np.asarray(im, dtype=np.uint8) for im in images]
    x = np.stack(arrays)
    if x.ndim == 3:  # L images: [N, H, W] -> [N, H, W, 1]
        x = x[..., None]
    return meta.preprocess(x)
