"""A torch :class:`~torch.utils.data.Dataset` over re-ID :class:`~reidserve.data.datasets.Item` lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import Item
from .transforms import TestTransform, load_image

__all__ = ["ReidImageDataset"]

Transform = Callable[..., np.ndarray]


class ReidImageDataset(Dataset):
    """Returns ``(image, pid, camid, index)`` with ``image`` a ``float32`` 3xHxW tensor.

    ``transform(img, rng)`` receives a :class:`numpy.random.Generator` seeded from
    ``(seed, epoch, index)``, so the augmentation of an item depends only on those three numbers
    (not on worker scheduling); call :meth:`set_epoch` to change it between epochs. ``labels``
    overrides the item pids (e.g. pseudo-labels, or relabelled training ids). With
    ``cache=True`` decoded images are kept in memory (for small datasets, e.g. synthetic ones).
    """

    def __init__(
        self,
        items: Sequence[Item],
        transform: Transform | None = None,
        *,
        seed: int = 0,
        labels: Sequence[int] | None = None,
        cache: bool = False,
    ) -> None:
        self.items = list(items)
        if not self.items:
            raise ValueError("ReidImageDataset needs at least one item")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.transform: Transform = transform if transform is not None else TestTransform()
        self.seed = int(seed)
        self.epoch = 0
        self.labels: list[int] | None = None
        if labels is not None:
            self.set_labels(labels)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream. With a DataLoader, call it before creating the epoch's
        iterator (workers copy the dataset then), i.e. don't combine with ``persistent_workers``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def set_labels(self, labels: Sequence[int]) -> None:
        labels = [int(x) for x in labels]
        if len(labels) != len(self.items):
            raise ValueError(f"got {len(labels)} labels for {len(self.items)} items")
        self.labels = labels

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, index: int) -> np.ndarray:
        if self._cache is None:
            return load_image(self.items[index].path)
        img = self._cache.get(index)
        if img is None:
            img = self._cache[index] = load_image(self.items[index].path)
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        item = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = self.transform(self._image(index), rng)
        pid = self.labels[index] if self.labels is not None else item.pid
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), pid, item.camid, index
