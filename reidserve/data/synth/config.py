"""The generator's parameters: :class:`SynthConfig` (validated), :class:`SynthResult`, and their parsers."""

from __future__ import annotations

from dataclasses import dataclass

from pruneopt.common.params import parse_pair
from pruneopt.common.params import parse_range as _parse_range

from ...errors import ReidserveError

__all__ = ["SynthConfig", "SynthError", "SynthResult", "parse_range", "parse_size"]


class SynthError(ReidserveError):
    """Parameters of the synthetic dataset (or its output folder) that cannot be used; the message says why."""


def parse_size(text: str) -> tuple[int, int]:
    """``'128x64'`` -> ``(128, 64)`` (height x width; height 32..1024, width 16..512)."""
    h, w = parse_pair(text, "size", "HEIGHTxWIDTH, e.g. 128x64", error=SynthError)
    if not (32 <= h <= 1024 and 16 <= w <= 512):
        raise SynthError(f"size {h}x{w} out of range: height 32..1024, width 16..512")
    return h, w


def parse_range(text: str | int) -> tuple[int, int]:
    """``'8'`` -> ``(8, 8)``; ``'6-10'`` -> ``(6, 10)``."""
    return _parse_range(text, "range", error=SynthError)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of :func:`generate` (see the module docstring for their meaning)."""

    ids: int = 100
    cams: int = 6
    seed: int = 0
    imgs_per_id: tuple[int, int] = (6, 10)  # images per identity per camera, inclusive range
    min_cams: int = 2  # each identity is seen by a random subset of min_cams..cams cameras
    size: tuple[int, int] = (128, 64)  # height, width
    distractors: int | None = None  # pid-0 gallery images; None = one per identity
    junk: int = 0  # pid -1 gallery images (background crops)
    jpeg_quality: int | None = None  # None = per-camera quality (60..95)
    # how far each camera's look departs from a neutral camera: 1 = the full (hard) look, 0 = every camera
    # neutral (no colour cast, plain grey background, no blur/noise/occluders); see world.soften_camera
    camera_strength: float = 1.0

    def validate(self) -> SynthConfig:
        if not 2 <= self.ids <= 9999:
            raise SynthError(f"ids must be in 2..9999 (half train, half test), got {self.ids}")
        if not 2 <= self.cams <= 9:
            raise SynthError(
                f"cams must be in 2..9 (Market-1501 names have one camera digit), got {self.cams}"
            )
        if not 2 <= self.min_cams <= self.cams:
            raise SynthError(f"min_cams must be in 2..cams={self.cams}, got {self.min_cams}")
        lo, hi = self.imgs_per_id
        if not 1 <= lo <= hi <= 99:
            raise SynthError(f"imgs_per_id must be a range within 1..99, got {lo}-{hi}")
        parse_size(f"{self.size[0]}x{self.size[1]}")
        if self.seed < 0:
            raise SynthError(f"seed must be >= 0, got {self.seed}")
        if (self.distractors is not None and self.distractors < 0) or self.junk < 0:
            raise SynthError("distractors and junk must be >= 0")
        if self.jpeg_quality is not None and not 30 <= self.jpeg_quality <= 100:
            raise SynthError(f"jpeg_quality must be in 30..100, got {self.jpeg_quality}")
        if not 0.0 <= self.camera_strength <= 1.0:
            raise SynthError(f"camera_strength must be in [0, 1], got {self.camera_strength}")
        return self

    @property
    def num_distractors(self) -> int:
        return self.ids if self.distractors is None else self.distractors


@dataclass(frozen=True)
class SynthResult:
    root: str
    num_train: int
    num_query: int
    num_gallery: int
    num_train_ids: int
    num_test_ids: int
