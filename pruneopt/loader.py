"""Mini-batches of network inputs from a split: images in memory through tensor operations, image files decoded
and augmented in ``DataLoader`` worker processes.

A :class:`Feed` says how images become inputs (channels, size, mean/std, augmentation style) and where (device,
loader processes). :func:`batches` yields ``(inputs, labels)`` on the feed's device:

* a :class:`~pruneopt.data.splits.Split` (Fashion-MNIST, CIFAR) with ``pad-crop`` augmentation goes through
  tensor operations on whole batches, exactly as the search has always fed Fashion-MNIST (the default feed);
* a :class:`~pruneopt.data.splits.FileSplit` (an image folder), or any split with ``resized-crop`` augmentation, is
  decoded image by image (:class:`~pruneopt.data.images.Transform`) in ``loader_workers`` processes (0: in this
  one), into pinned memory when the device is a GPU.

Every random choice comes from the caller's generator: the data order, and for decoded images one seed per image
drawn in this process, so a batch is the same whichever loader process decodes which image. An image that cannot
be decoded stops the run naming its file, or with ``skip_bad`` is left out of its batch and counted
(:func:`skipped_images`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .data.fashion_mnist import MEAN, STD
from .data.images import BadImageError, Transform, convert_array, open_image
from .data.splits import FileSplit, Split
from .devices import is_cuda
from .errors import PruneoptError

log = logging.getLogger(__name__)
_SKIPPED: set[str] = set()


@dataclass(frozen=True)
class Feed:
    """How a split's images become network inputs (defaults: Fashion-MNIST's), and where they are made."""

    channels: int = 1
    size: tuple[int, int] = (28, 28)
    mean: tuple[float, ...] = (MEAN,)
    std: tuple[float, ...] = (STD,)
    style: str = "pad-crop"  # or "resized-crop"
    pad: int = 2  # pad-crop: pixels of padding
    device: str = "cpu"
    loader_workers: int = 0  # processes decoding image files (0: this one)
    skip_bad: bool = False  # leave undecodable images out (counted) instead of stopping

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise PruneoptError(f"--mean and --std need {self.channels} value(s), one per input channel")

    @property
    def color(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @property
    def transform(self) -> Transform:
        return Transform(self.size, self.color, self.style, self.pad)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(size=list(self.size), mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Feed:
        return cls(**{**d, "size": tuple(d["size"]), "mean": tuple(d["mean"]), "std": tuple(d["std"])})

    def on(self, device: str) -> Feed:
        return Feed(**{**asdict(self), "device": device})


FASHION_MNIST = Feed()


def skipped_images() -> list[str]:
    """The undecodable images this process left out so far (``skip_bad``), as ``path: reason`` lines."""
    return sorted(_SKIPPED)


# -- in-memory arrays ------------------------------------------------------------------------------------------
def normalise_(x: torch.Tensor, feed: Feed) -> torch.Tensor:
    """``(x - mean) / std`` per channel, in place, on ``[N, C, H, W]`` in [0, 1]."""
    if len(feed.mean) == 1:
        return x.sub_(feed.mean[0]).div_(feed.std[0])
    for c, (m, s) in enumerate(zip(feed.mean, feed.std, strict=True)):
        x[:, c].sub_(m).div_(s)
    return x


def to_input(images: np.ndarray, feed: Feed = FASHION_MNIST) -> torch.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` -> normalised float ``[N, C, H, W]`` on the feed's device."""
    arr = convert_array(images, feed.channels)
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(feed.device, non_blocking=True).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    if tuple(x.shape[-2:]) != feed.size:
        x = F.interpolate(x, size=feed.size, mode="bilinear", align_corners=False, antialias=True)
    return normalise_(x, feed)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2,
            fill: Sequence[float] = (-MEAN / STD,)) -> torch.Tensor:
    """Random crop after padding with ``fill`` (the normalised black level of each channel) and random
    horizontal flip."""
    n, c, h, w = x.shape
    if len(fill) == 1:
        xp = F.pad(x, (pad, pad, pad, pad), value=fill[0])
    else:
        xp = x.new_empty(n, c, h + 2 * pad, w + 2 * pad)
        for ch, value in enumerate(fill):
            xp[:, ch].fill_(value)
        xp[:, :, pad:pad + h, pad:pad + w] = x
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    out = torch.stack([xp[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offs.tolist())])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def _array_batches(split: Split, order: np.ndarray, batch_size: int, gen: torch.Generator | None, train: bool,
                   feed: Feed) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    fill = tuple(-m / s for m, s in zip(feed.mean, feed.std, strict=True))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = np.sort(order[start:start + batch_size])
        x = to_input(split.images[idx], feed)
        if train and gen is not None:
            x = augment(x, gen, feed.pad, fill)
        yield x, torch.from_numpy(split.labels[idx]).to(feed.device, non_blocking=True)


# -- decoded images ---------------------------------------------------------------------------------------------
class DecodedImages(Dataset):
    """Items ``(index, seed)`` -> ``(uint8 [C, H, W] or None, label, path)``; seed < 0: the evaluation
    transform."""

    def __init__(self, split: Split | FileSplit, transform: Transform) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def _name(self, i: int) -> str:
        return self.split.paths[i] if isinstance(self.split, FileSplit) else f"image {i}"

    def __getitem__(self, item: tuple[int, int]) -> tuple[np.ndarray | None, int, str]:
        i, seed = item
        rng = np.random.default_rng(seed) if seed >= 0 else None
        try:
            if isinstance(self.split, FileSplit):
                img = open_image(self.split.paths[i], self.transform.color)
            else:
                img = Image.fromarray(convert_array(self.split.images[i:i + 1], len(self.transform.color))[0])
            arr = self.transform.train(img, rng) if rng is not None else self.transform.eval(img)
            return arr, int(self.split.labels[i]), ""
        except BadImageError as exc:  # reported by the main process: a worker's exception would be multi-line
            return None, int(self.split.labels[i]), str(exc)


def _collate(items: list[tuple[np.ndarray | None, int, str]]) -> tuple[torch.Tensor | None, torch.Tensor, list[str]]:
    good = [(a, y) for a, y, _ in items if a is not None]
    bad = [msg for a, _, msg in items if a is None]
    if not good:
        return None, torch.zeros(0, dtype=torch.int64), bad
    x = torch.from_numpy(np.stack([a for a, _ in good]))
    return x, torch.tensor([y for _, y in good], dtype=torch.int64), bad


def _decoded_batches(split: Split | FileSplit, index_batches: list[list[tuple[int, int]]],
                     feed: Feed) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(DecodedImages(split, feed.transform), batch_sampler=index_batches,
                        num_workers=feed.loader_workers, collate_fn=_collate, pin_memory=is_cuda(feed.device))
    for x, y, bad in loader:
        for message in bad:
            if not feed.skip_bad:
                raise BadImageError(f"{message}; --skip-bad-images leaves such files out (and counts them)")
            if message not in _SKIPPED:
                log.warning("skipped: %s", message)
            _SKIPPED.add(message)
        if x is None:
            continue
        x = normalise_(x.to(feed.device, non_blocking=True).float().div_(255.0), feed)
        yield x, y.to(feed.device, non_blocking=True)


def batches(split: Split | FileSplit, batch_size: int, gen: torch.Generator, train: bool = True,
            feed: Feed = FASHION_MNIST) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled (and, when ``train``, augmented) mini-batches of one pass over ``split``; the last partial batch is
    dropped."""
    order = torch.randperm(len(split), generator=gen).numpy()
    if isinstance(split, Split) and feed.style == "pad-crop":
        yield from _array_batches(split, order, batch_size, gen, train, feed)
        return
    index_batches = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = np.sort(order[start:start + batch_size])
        seeds = torch.randint(0, 2**62, (len(idx),), generator=gen).tolist() if train else [-1] * len(idx)
        index_batches.append(list(zip(idx.tolist(), seeds, strict=True)))
    yield from _decoded_batches(split, index_batches, feed)


def in_order(split: Split | FileSplit, batch_size: int, feed: Feed = FASHION_MNIST
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every image of ``split`` once, in order, with the evaluation transform (the last batch may be partial)."""
    if isinstance(split, Split) and feed.style == "pad-crop":
        for start in range(0, len(split), batch_size):
            yield (to_input(split.images[start:start + batch_size], feed),
                   torch.from_numpy(split.labels[start:start + batch_size]).to(feed.device, non_blocking=True))
        return
    index_batches = [[(i, -1) for i in range(s, min(len(split), s + batch_size))]
                     for s in range(0, len(split), batch_size)]
    yield from _decoded_batches(split, index_batches, feed)


def materialise(split: Split | FileSplit, feed: Feed, batch_size: int = 256) -> Split:
    """``split`` decoded once with the evaluation transform into memory (uint8 at the feed's size and channels), so
    that scoring it again costs no decoding."""
    if isinstance(split, Split) and tuple(split.images.shape[1:3]) == feed.size:
        return Split(convert_array(split.images, feed.channels), split.labels)
    cpu = feed.on("cpu")
    chunks, labels = [], []
    index_batches = [[(i, -1) for i in range(s, min(len(split), s + batch_size))]
                     for s in range(0, len(split), batch_size)]
    loader = DataLoader(DecodedImages(split, cpu.transform), batch_sampler=index_batches,
                        num_workers=feed.loader_workers, collate_fn=_collate)
    for x, y, bad in loader:
        if bad and not feed.skip_bad:
            raise BadImageError(f"{bad[0]}; --skip-bad-images leaves such files out (and counts them)")
        _SKIPPED.update(bad)
        if x is not None:
            chunks.append(x.numpy())
            labels.append(y.numpy())
    images = np.concatenate(chunks).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images[..., 0] if feed.channels == 1 else images), np.concatenate(labels))
