"""Classification data sources behind one interface: Fashion-MNIST (the default), CIFAR-10/100 and image folders.

``--data`` names one: ``fashion-mnist``, ``cifar10`` or ``cifar100`` (files found in ``--data-dir``; Fashion-MNIST
also in the usual places when no ``--data-dir`` is given), or a folder -- a CIFAR python-pickle folder or an image
folder (:mod:`.image_folder`). :func:`open_data` returns a :class:`ClassificationData`: the training and test
splits (in memory or as files), the class names, and what the data says about the network's input -- its natural
size and channel count and its per-channel mean and standard deviation (Fashion-MNIST's and CIFAR's published
values; an image folder's measured on a seeded sample). No torch here; nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, PruneoptError
from . import cifar, fashion_mnist
from .image_folder import probe, scan_folder
from .images import convert_array, pixel_stats
from .splits import AnySplit

NAMED = ("fashion-mnist", *cifar.NAMES)
Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True, eq=False)
class ClassificationData:
    """A data set's training and test images and what it says about the input (see the module docstring)."""

    kind: str  # "fashion-mnist", "cifar10", "cifar100" or "image folder"
    root: Path  # where the files were read
    train: AnySplit  # every training image (the validation images are carved from these)
    test: AnySplit
    classes: tuple[str, ...]
    size: tuple[int, int]  # natural input height x width
    channels: int  # natural channel count (1: grey)
    layout: str = ""  # an image folder's layout ("train/val" or "one tree")
    known_stats: dict[int, Stats] = field(default_factory=dict)  # published statistics by channel count
    sample: np.ndarray | None = None  # images (uint8, at ``size``) that other statistics are measured on

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def stats(self, channels: int) -> Stats:
        """Per-channel mean and standard deviation of the images fed with ``channels`` channels."""
        if channels in self.known_stats:
            return self.known_stats[channels]
        if self.sample is None:
            raise PruneoptError(f"no statistics of {self.kind} for {channels} channel(s)")
        return pixel_stats(convert_array(self.sample, channels))

    def describe(self) -> str:
        """One line for logs and the report."""
        where = f"{self.kind} ({self.layout})" if self.layout else self.kind
        c, (h, w) = self.channels, self.size
        return (f"{where} at {self.root}: {self.num_classes} classes, {len(self.train)} training and "
                f"{len(self.test)} test images, natural input {c}x{h}x{w}")


def _fashion_mnist(data_dir: str | None) -> ClassificationData:
    fm = fashion_mnist.load_fashion_mnist(data_dir)
    grey = ((fashion_mnist.MEAN,), (fashion_mnist.STD,))
    rgb = ((fashion_mnist.MEAN,) * 3, (fashion_mnist.STD,) * 3)
    return ClassificationData("fashion-mnist", fm.root, fm.train, fm.test, fashion_mnist.CLASSES, (28, 28), 1,
                              known_stats={1: grey, 3: rgb})


def _cifar(folder: str | os.PathLike[str], name: str | None) -> ClassificationData:
    data = cifar.load_cifar(folder, name)
    stats = {3: (cifar.MEAN[data.name], cifar.STD[data.name])}
    return ClassificationData(data.name, data.root, data.train, data.test, data.classes, (32, 32), 3,
                              known_stats=stats, sample=data.train.images[:5000])


def _image_folder(folder: str, val_fraction: float, seed: int) -> ClassificationData:
    data = scan_folder(folder, val_fraction, seed)
    seen = probe(data.train, seed)
    return ClassificationData("image folder", data.root, data.train, data.test, data.classes, seen.size,
                              seen.channels, layout=data.layout, sample=seen.sample)


def open_data(data: str, data_dir: str | None = None, val_fraction: float = 1 / 6, seed: int = 0
              ) -> ClassificationData:
    """The data set ``--data`` names (see the module docstring); one-line errors when it cannot be read.

    ``val_fraction`` and ``seed`` split a one-tree image folder into training and test images. The result is
    cached per arguments, so the stages of a run scan a folder once.
    """
    return _open_data(data, None if data_dir is None else str(data_dir), float(val_fraction), int(seed))


@lru_cache(maxsize=4)
def _open_data(data: str, data_dir: str | None, val_fraction: float, seed: int) -> ClassificationData:
    if data == "fashion-mnist":
        return _fashion_mnist(data_dir)
    if data in cifar.NAMES:
        folder = data_dir or os.environ.get("PRUNEOPT_DATA")
        if folder is None:
            raise DataNotFoundError(f"--data {data} needs --data-dir DIR (the folder of its python-pickle files, "
                                    "or their parent), or give that folder as --data")
        return _cifar(folder, data)
    if data_dir is not None:
        raise PruneoptError(f"--data-dir is for --data {', '.join(NAMED)}; a CIFAR or image folder is given as "
                            f"--data itself (got --data {data} --data-dir {data_dir})")
    if not Path(data).is_dir():
        raise DataNotFoundError(f"--data {data}: neither {', '.join(NAMED)} nor a folder (an image folder or a "
                                "CIFAR python-pickle folder)")
    if cifar.detect(data) is not None:
        return _cifar(data, None)
    return _image_folder(data, val_fraction, seed + 1)
