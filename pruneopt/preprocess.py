"""Image preprocessing shared by training, export and serving: pixels to the network's normalised input (numpy only).

Every stage feeds a network ``(x - mean) / std`` per channel, where ``x`` is the pixel scaled to ``[0, 1]``. This
module is the one implementation of that step; it imports neither torch nor PIL, so the serving path can use it.

Two ways of scaling ``uint8`` pixels are kept because they differ in the last bit of float32 for about half of the
256 values and each stage must stay bit-identical to what it did before: training divides by 255
(:func:`normalise_pixels` without ``pixel_scale``), while an exported model's metadata defines
``x = pixel * pixel_scale`` (with ``pixel_scale`` multiplied in float32), which the service applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalise_pixels", "standardise", "to_unit_range"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _per_channel(values: Sequence[float], ndim: int, channel_axis: int) -> np.ndarray:
    """``values`` as float32, shaped to broadcast along ``channel_axis`` of an ``ndim``-dimensional array."""
    shape = [1] * ndim
    shape[channel_axis] = -1
    return np.asarray(values, dtype=np.float32).reshape(shape)


def standardise(x: np.ndarray, mean: Sequence[float], std: Sequence[float], *, channel_axis: int = -1) -> np.ndarray:
    """``(x - mean) / std`` per channel (``channel_axis``), computed and returned in float32."""
    x = np.asarray(x)
    return (x.astype(np.float32) - _per_channel(mean, x.ndim, channel_axis)) / _per_channel(std, x.ndim, channel_axis)


def to_unit_range(pixels: np.ndarray, pixel_scale: float | None = None) -> np.ndarray:
    """``uint8`` pixels as float32 in ``[0, 1]``: divided by 255, or multiplied by ``float32(pixel_scale)``."""
    x = np.asarray(pixels).astype(np.float32)
    return x / 255.0 if pixel_scale is None else x * np.float32(pixel_scale)


def normalise_pixels(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float], *, channel_axis: int = -1,
                     pixel_scale: float | None = None) -> np.ndarray:
    """``uint8`` pixels -> ``(pixels scaled to [0, 1] - mean) / std`` in float32, same layout as the input."""
    x = to_unit_range(pixels, pixel_scale)
    return standardise(x, mean, std, channel_axis=channel_axis)
