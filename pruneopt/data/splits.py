"""Splits of a classification data set: images in memory (:class:`Split`) or image files (:class:`FileSplit`), and
the seeded, class-stratified carving of one split into two (:func:`train_val_split`).

Both kinds hold integer labels ``0..K-1`` and take a subset by index (:meth:`take`), so everything that only
chooses images (stratified splits, ``--train-limit``) is written once. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PruneoptError


@dataclass(frozen=True)
class Split:
    """Images in memory (uint8, ``[N, H, W]`` grey or ``[N, H, W, C]``) and labels (int64, ``[N]``)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Any) -> Split:
        """The images at ``index`` (a slice, an index array or a boolean mask)."""
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class FileSplit:
    """Image files (decoded when a batch needs them) and their labels (int64, ``[N]``)."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise PruneoptError(f"{len(self.paths)} image files but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Any) -> FileSplit:
        """The files at ``index`` (a slice, an index array or a boolean mask)."""
        picked = np.arange(len(self.paths))[index]
        return FileSplit(tuple(self.paths[i] for i in picked), self.labels[index])


AnySplit = Split | FileSplit


def stratified_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask choosing ``round(fraction * n_c)`` of each class's ``n_c`` items, at random by ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise PruneoptError(f"val fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        chosen.append(idx[: int(round(len(idx) * fraction))])
    mask = np.zeros(len(labels), dtype=bool)
    if chosen:
        mask[np.concatenate(chosen)] = True
    return mask


def train_val_split(split: Any, val_fraction: float = 1 / 6, seed: int = 0) -> tuple[Any, Any]:
    """Carve a class-stratified validation set out of ``split`` (either kind), deterministically by ``seed``."""
    mask = stratified_mask(split.labels, val_fraction, seed)
    return split.take(~mask), split.take(mask)
