"""Image preprocessing shared by training, export and serving: pixels to the network's normalised input (numpy only).

Every stage feeds a network ``(x - mean) / std`` per channel, where ``x`` is the pixel scaled to ``[0, 1]``. This
module is the one implementation of that step; it imports neither torch nor PIL, so the serving path can use it.

Two ways of scaling ``uint8`` pixels are kept because they differ in the last bit of float32 for about half of the
256 values and each stage must stay bit-identical to what it did before: training divides by 255
(:func:`normalise_pixels` without ``pixel_scale``), while an exported model's metadata defines
``x = pixel * pixel_scale`` (with ``pixel_scale`` multiplied in float32), which the service applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common.files import atomic_write_json
from .errors import PruneoptError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PREPROCESS_FILE", "Preprocess", "normalise_pixels", "read_preprocess",
           "standardise", "to_unit_range"]

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


# -- what a model folder records about its input ----------------------------------------------------------------
PREPROCESS_FILE = "preprocess.json"
PREPROCESS_FORMAT = "pruneopt.preprocess/1"
COLORS = ("RGB", "L")
OUTPUT_KINDS = ("logits", "embedding")


@dataclass(frozen=True)
class Preprocess:
    """How a saved model's input is made from an image, and what it outputs (``preprocess.json``).

    The image is converted to ``color`` (``RGB``, or ``L`` for one grey channel), resized to ``input_shape``'s
    height x width, scaled by ``pixel_scale`` and standardised with ``mean`` / ``std`` per channel. ``output`` is
    ``logits`` (a classifier) or ``embedding`` (``normalized``: L2-normalised). Every stage that saves a model
    writes it beside the spec, and ``pruneopt export`` reads it, so no stage asks the user to retype it.
    """

    input_shape: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color: str = "RGB"
    output: str = "logits"
    normalized: bool = False
    pixel_scale: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        c, h, w = (int(v) for v in self.input_shape)
        object.__setattr__(self, "input_shape", (c, h, w))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = [
            (min(c, h, w) >= 1, f"input_shape must be three positive integers C, H, W, got {self.input_shape}"),
            (len(self.mean) == c and len(self.std) == c,
             f"mean and std need one value per channel ({c}), got {len(self.mean)} and {len(self.std)}"),
            (all(v > 0 for v in self.std), f"std values must be > 0, got {self.std}"),
            (self.color in COLORS, f"color must be one of {', '.join(COLORS)}, got {self.color!r}"),
            ((self.color == "L") == (c == 1), f"color {self.color!r} does not fit {c} input channel(s)"),
            (self.output in OUTPUT_KINDS, f"output must be one of {', '.join(OUTPUT_KINDS)}, got {self.output!r}"),
            (self.pixel_scale > 0, f"pixel_scale must be > 0, got {self.pixel_scale}"),
        ]
        for ok, message in problems:
            if not ok:
                raise PruneoptError(f"preprocessing: {message}")

    @classmethod
    def for_channels(cls, input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                     **kwargs: Any) -> Preprocess:
        """``color`` from the channel count (1: ``L``, else ``RGB``)."""
        return cls(tuple(input_shape), tuple(mean), tuple(std),  # type: ignore[arg-type]
                   color="L" if int(input_shape[0]) == 1 else "RGB", **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(input_shape=list(self.input_shape), mean=list(self.mean), std=list(self.std))
        return {"format": PREPROCESS_FORMAT, **d}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = PREPROCESS_FILE) -> Preprocess:
        if not isinstance(data, Mapping) or data.get("format") != PREPROCESS_FORMAT:
            raise PruneoptError(f"{where}: not a pruneopt preprocessing record ({PREPROCESS_FORMAT})")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise PruneoptError(f"{where}: malformed preprocessing record ({exc})") from None

    def save(self, folder: str | Path) -> Path:
        return atomic_write_json(Path(folder) / PREPROCESS_FILE, self.to_dict())

    def differences(self, other: Preprocess) -> list[str]:
        """``field: mine vs theirs`` for every field that differs (floats compared to 1e-6)."""
        out = []
        for name in self.__dataclass_fields__:
            a, b = getattr(self, name), getattr(other, name)
            same = (np.allclose(a, b, rtol=0, atol=1e-6) if isinstance(a, tuple | float) and not isinstance(a, bool)
                    and len(np.atleast_1d(a)) == len(np.atleast_1d(b)) else a == b)
            if not same:
                out.append(f"{name}: {a} vs {b}")
        return out


def read_preprocess(folder: str | Path) -> Preprocess | None:
    """The :class:`Preprocess` recorded in ``folder`` (``preprocess.json``), or ``None`` when there is none."""
    path = Path(folder) / PREPROCESS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PruneoptError(f"{path}: cannot read ({exc}); save the model again") from None
    return Preprocess.from_dict(data, str(path))
