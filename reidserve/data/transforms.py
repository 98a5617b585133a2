"""Image loading and re-ID augmentations in numpy/PIL (no torchvision).

Every transform maps an ``HxWx3`` ``uint8`` RGB image (numpy array or PIL image) to a ``float32``
``3xHxW`` array normalised with the ImageNet mean/std. Random transforms take a
:class:`numpy.random.Generator`, so results are reproducible given the generator's seed.

The training pipeline is the usual re-ID one: resize to ``size`` (H, W) -> optional colour jitter
(:class:`ColorJitter`, off by default) -> random horizontal flip -> zero-pad by ``pad`` pixels and
random-crop back to ``size`` -> normalise -> random erasing (Zhong et al. 2020, filling the erased box
with the mean colour, i.e. ``0`` after normalisation, or with per-pixel noise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalise_pixels

from ..errors import ReidserveError
from ..imageio import read_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_image",
    "resize",
    "hflip",
    "pad_random_crop",
    "normalize",
    "random_erasing",
    "ColorJitter",
    "TrainTransform",
    "TestTransform",
]

ImageLike = np.ndarray | Image.Image


class ImageReadError(ReidserveError, OSError):
    """An image file that cannot be read (a user-facing error that is also an ``OSError``)."""


class ImageMissingError(ImageReadError, FileNotFoundError):
    """An image file that does not exist."""


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an ``HxWx3`` ``uint8`` RGB array, decoded as the service decodes uploads
    (:func:`reidserve.imageio.read_image`: EXIF orientation applied, 16/32-bit images scaled to 8 bits)."""
    try:
        return read_image(path, "RGB")
    except FileNotFoundError:
        raise ImageMissingError(f"image {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def _as_uint8(img: ImageLike) -> np.ndarray:
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {img.shape} dtype {img.dtype}")
    return img


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive (height, width), got {size}")
    return h, w


def resize(img: ImageLike, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``size = (height, width)``; returns ``uint8`` HxWx3."""
    arr = _as_uint8(img)
    h, w = _check_size(size)
    if arr.shape[:2] == (h, w):
        return arr
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right (works on HxWxC and CxHxW is *not* supported: pass HWC)."""
    return np.ascontiguousarray(img[:, ::-1])


def pad_random_crop(img: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by ``pad`` pixels on every side, then crop a random window of the original size."""
    if pad <= 0:
        return img
    h, w = img.shape[:2]
    padded = np.zeros((h + 2 * pad, w + 2 * pad) + img.shape[2:], dtype=img.dtype)
    padded[pad : pad + h, pad : pad + w] = img
    top = int(rng.integers(0, 2 * pad + 1))
    left = int(rng.integers(0, 2 * pad + 1))
    return padded[top : top + h, left : left + w]


def normalize(
    img: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """``uint8`` HxWx3 -> ``float32`` 3xHxW, scaled to [0, 1] then standardised per channel
    (:func:`pruneopt.preprocess.normalise_pixels`)."""
    return np.ascontiguousarray(normalise_pixels(img, mean, std).transpose(2, 0, 1))


def random_erasing(
    chw: np.ndarray,
    rng: np.random.Generator,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 3.3),
    fill: str = "mean",
    max_attempts: int = 100,
) -> np.ndarray:
    """Erase one random rectangle of a normalised CxHxW array (returns a new array).

    ``fill='mean'`` writes ``0`` (the mean colour once normalised); ``fill='random'`` writes
    standard-normal noise.
    """
    if fill not in ("mean", "random"):
        raise ValueError(f"fill must be 'mean' or 'random', got {fill!r}")
    out = chw.copy()
    if rng.random() >= p:
        return out
    _, h, w = chw.shape
    for _ in range(max_attempts):
        target = rng.uniform(*area) * h * w
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        eh = int(round(np.sqrt(target * aspect)))
        ew = int(round(np.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top = int(rng.integers(0, h - eh + 1))
            left = int(rng.integers(0, w - ew + 1))
            if fill == "mean":
                out[:, top : top + eh, left : left + ew] = 0.0
            else:
                out[:, top : top + eh, left : left + ew] = rng.standard_normal((chw.shape[0], eh, ew))
            return out
    return out


@dataclass(frozen=True)
class ColorJitter:
    """Camera-like colour jitter of an ``HxWx3`` ``uint8`` image: random brightness, contrast, saturation and a
    per-channel gain (a colour cast), the nuisances a camera adds to a person's colours.

    Each amount ``a`` draws a factor uniformly from ``[1 - a, 1 + a]`` (the gain draws one per channel);
    0 leaves that property alone. The factors are drawn in a fixed order (brightness, contrast, saturation,
    three gains) and applied in that order to the image in ``[0, 1]``, then clipped and rounded back to
    ``uint8``: brightness scales every value, contrast scales the distance to the image's mean grey level,
    saturation scales each pixel's distance to its own grey level, the gain scales each channel.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    gain: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation", "gain"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"colour jitter {name} must be in [0, 1), got {value}")

    @classmethod
    def of_strength(cls, strength: float) -> ColorJitter:
        """One knob: brightness, contrast and saturation ``strength``, channel gain ``strength / 2``."""
        return cls(brightness=strength, contrast=strength, saturation=strength, gain=strength / 2)

    @property
    def active(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.gain))

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b = rng.uniform(1 - self.brightness, 1 + self.brightness)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        s = rng.uniform(1 - self.saturation, 1 + self.saturation)
        g = rng.uniform(1 - self.gain, 1 + self.gain, size=3)
        x = _as_uint8(img).astype(np.float32) / 255.0 * np.float32(b)
        mean = x.mean()
        x = (x - mean) * np.float32(c) + mean
        grey = x.mean(axis=2, keepdims=True)
        x = (grey + (x - grey) * np.float32(s)) * g.astype(np.float32)
        return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class TestTransform:
    """Resize + normalise."""

    __test__ = False  # not a pytest test class despite the name

    size: tuple[int, int] = (256, 128)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        _check_size(self.size)

    def __call__(self, img: ImageLike, rng: np.random.Generator | None = None) -> np.ndarray:
        return normalize(resize(img, self.size), self.mean, self.std)


@dataclass(frozen=True)
class TrainTransform:
    """Resize -> colour jitter (when ``color`` is given) -> random flip -> pad + random crop -> normalise ->
    random erasing. Without ``color`` no colour random numbers are drawn, so the output is the same as before
    the option existed."""

    size: tuple[int, int] = (256, 128)
    flip_p: float = 0.5
    pad: int = 10
    erase_p: float = 0.5
    erase_fill: str = "mean"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    color: ColorJitter | None = None

    def __post_init__(self) -> None:
        _check_size(self.size)
        if not (0.0 <= self.flip_p <= 1.0 and 0.0 <= self.erase_p <= 1.0):
            raise ValueError("flip_p and erase_p are probabilities in [0, 1]")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")

    def __call__(self, img: ImageLike, rng: np.random.Generator | None = None) -> np.ndarray:
        if rng is None:
            raise ValueError("TrainTransform needs a numpy Generator (rng=np.random.default_rng(seed))")
        x = resize(img, self.size)
        if self.color is not None and self.color.active:
            x = self.color(x, rng)
        if rng.random() < self.flip_p:
            x = hflip(x)
        x = pad_random_crop(x, self.pad, rng)
        chw = normalize(x, self.mean, self.std)
        return random_erasing(chw, rng, p=self.erase_p, fill=self.erase_fill)
