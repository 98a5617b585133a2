"""Image files of the kinds the service must decode correctly: 16-bit and 32-bit samples, EXIF orientation.

Each maker returns the file bytes and the ``uint8`` pixels a correct decoder must see (the "8-bit copy"), so a test
can compare what the service makes of the file with what it makes of an ordinary 8-bit PNG of those pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = ["exif_oriented", "pfm_float", "pgm16", "png16_grey", "png48_rgb", "to_8bit_16", "to_8bit_float"]


def to_8bit_16(x: np.ndarray) -> np.ndarray:
    """16-bit samples on 0..65535 -> 0..255 (``round(v / 257)``)."""
    return np.clip(np.rint(x.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def to_8bit_float(x: np.ndarray) -> np.ndarray:
    """Float samples on 0..1 -> 0..255 (``round(v * 255)``)."""
    return np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def png16_grey(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """A 16-bit greyscale PNG of ``x`` (``uint16`` HxW; PIL opens it as mode ``I;16``)."""
    buf = io.BytesIO()
    Image.fromarray(x.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue(), to_8bit_16(x)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png48_rgb(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """A 16-bit-per-channel RGB PNG of ``x`` (``uint16`` HxWx3), written by hand (PIL cannot write one)."""
    h, w = x.shape[:2]
    raw = b"".join(b"\x00" + x[row].astype(">u2").tobytes() for row in range(h))
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    return data, to_8bit_16(x)


def pgm16(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """A 16-bit binary PGM of ``x`` (``uint16`` HxW; PIL opens it as its 32-bit integer mode ``I``)."""
    h, w = x.shape
    return f"P5\n{w} {h}\n65535\n".encode() + x.astype(">u2").tobytes(), to_8bit_16(x)


def pfm_float(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """A greyscale PFM of ``x`` (float HxW on 0..1; PIL opens it as its 32-bit float mode ``F``). PFM stores the
    bottom row first; a negative scale says little-endian."""
    h, w = x.shape
    return f"Pf\n{w} {h}\n-1.0\n".encode() + x[::-1].astype("<f4").tobytes(), to_8bit_float(x)


# the stored pixels of an image shown upright after the EXIF orientation: the inverse transposition
_STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_270}


def exif_oriented(upright: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    """A file whose pixels are ``upright`` (``uint8`` HxWx3) stored as a camera would (sideways, mirrored) with the
    EXIF ``Orientation`` tag that makes a viewer show them upright."""
    stored = Image.fromarray(upright).transpose(_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()
