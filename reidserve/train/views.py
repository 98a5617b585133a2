"""The torch datasets training reads: two augmented views per image for training, one test view for features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data import TestTransform, TrainTransform
from ..data.transforms import ColorJitter
from .images import DecodedImages

__all__ = ["TestViewSet", "TwoViewSet", "make_loader", "train_transform"]


def train_transform(size: tuple[int, int], color_jitter: float = 0.0) -> TrainTransform:
    """The re-ID augmentation at ``size``: flip, pad + random crop, random erasing; the padding is 10 pixels
    at width 128 (the usual 256x128 recipe) and scales with the width (2 pixels at 64x32). ``color_jitter``
    > 0 adds :meth:`ColorJitter.of_strength` of that strength first (camera-like colour changes)."""
    color = ColorJitter.of_strength(color_jitter) if color_jitter > 0 else None
    return TrainTransform(size, pad=max(1, round(10 * size[1] / 128)), color=color)


class TestViewSet(torch.utils.data.Dataset):
    """Image ``indices[i]`` of ``images`` through the (deterministic) test transform."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, images: DecodedImages, indices: Sequence[int], transform: TestTransform) -> None:
        self.images, self.indices, self.transform = images, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(self.images.get(self.indices[i])))


class TwoViewSet(torch.utils.data.Dataset):
    """Key ``(index, batch, slot)`` -> two augmented views and the pseudo-label of image ``index``.

    The augmentation of view ``v`` draws from ``default_rng([seed, epoch, batch, slot, v])``, so a batch is the
    same whichever process or worker builds it (set :attr:`epoch` and :attr:`labels` before each epoch).
    """

    def __init__(self, images: DecodedImages, transform: TrainTransform, seed: int) -> None:
        self.images, self.transform, self.seed = images, transform, seed
        self.epoch = 0
        self.labels = np.zeros(len(images), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, batch, slot = key
        img = self.images.get(index)
        views = [
            self.transform(img, np.random.default_rng([self.seed, self.epoch, batch, slot, v])) for v in (0, 1)
        ]
        return torch.from_numpy(views[0]), torch.from_numpy(views[1]), int(self.labels[index])


def make_loader(dataset: torch.utils.data.Dataset, workers: int, **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader with ``workers`` processes that do not outlive it."""
    return torch.utils.data.DataLoader(dataset, num_workers=workers, persistent_workers=False, **kwargs)
