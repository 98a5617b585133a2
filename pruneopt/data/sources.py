"""Classification data sources behind one interface: Fashion-MNIST (the default), CIFAR-10/100 and image folders.

``--data`` names one: ``fashion-mnist``, ``cifar10`` or ``cifar100`` (files found in ``--data-dir``; Fashion-MNIST
also in the usual places when no ``--data-dir`` is given), or a folder -- a CIFAR python-pickle folder or an image
folder (:mod:`.image_folder`). :func:`open_data` returns a :class:`ClassificationData`: the training and test
splits (in memory or as files), the class names, and its :class:`DataFacts` -- what the data says about the
network's input: its class count, natural size and channel count and its per-channel mean and standard deviation
(Fashion-MNIST's and CIFAR's published values, known without their files (:func:`data_facts`); an image folder's
measured on a seeded sample). No torch here; nothing is downloaded.
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
class DataFacts:
    """What a data set says about the network's input: classes, natural size and channels, pixel statistics."""

    kind: str  # "fashion-mnist", "cifar10", "cifar100" or "image folder"
    num_classes: int
    size: tuple[int, int]  # natural input height x width
    channels: int  # natural channel count (1: grey)
    known_stats: dict[int, Stats] = field(default_factory=dict)  # statistics by channel count
    sample: np.ndarray | None = None  # images (uint8, at ``size``) that other statistics are measured on

    def stats(self, channels: int) -> Stats:
        """Per-channel mean and standard deviation of the images fed with ``channels`` channels."""
        if channels in self.known_stats:
            return self.known_stats[channels]
        if channels == 1 and 3 in self.known_stats:  # the luma of the published colour statistics
            mean, std = self.known_stats[3]
            return (float(np.dot(LUMA, mean)),), (float(np.dot(LUMA, std)),)
        if self.sample is None:
            raise PruneoptError(f"no statistics of {self.kind} for {channels} channel(s)")
        return pixel_stats(convert_array(self.sample, channels))


LUMA = (0.299, 0.587, 0.114)
FACTS = {
    "fashion-mnist": DataFacts("fashion-mnist", 10, (28, 28), 1, {
        1: ((fashion_mnist.MEAN,), (fashion_mnist.STD,)), 3: ((fashion_mnist.MEAN,) * 3, (fashion_mnist.STD,) * 3)}),
    **{name: DataFacts(name, 10 if name == "cifar10" else 100, (32, 32), 3, {3: (cifar.MEAN[name], cifar.STD[name])})
       for name in cifar.NAMES},
}


@dataclass(frozen=True, eq=False)
class ClassificationData:
    """A data set's training and test images, its class names and its :class:`DataFacts`."""

    facts: DataFacts
    root: Path  # where the files were read
    train: AnySplit  # every training image (the validation images are carved from these)
    test: AnySplit
    classes: tuple[str, ...]
    layout: str = ""  # an image folder's layout ("train/val" or "one tree")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        """One line for logs and the report."""
        f = self.facts
        where = f"{f.kind} ({self.layout})" if self.layout else f.kind
        return (f"{where} at {self.root}: {self.num_classes} classes, {len(self.train)} training and "
                f"{len(self.test)} test images, natural input {f.channels}x{f.size[0]}x{f.size[1]}")


def data_facts(data: str, val_fraction: float = 1 / 6, seed: int = 0) -> DataFacts:
    """The facts of ``--data`` without reading a named data set's files (a folder is scanned and sampled)."""
    if data in FACTS:
        return FACTS[data]
    return open_data(data, None, val_fraction, seed).facts


def _fashion_mnist(data_dir: str | None) -> ClassificationData:
    fm = fashion_mnist.load_fashion_mnist(data_dir)
    return ClassificationData(FACTS["fashion-mnist"], fm.root, fm.train, fm.test, fashion_mnist.CLASSES)


def _cifar(folder: str | os.PathLike[str], name: str | None) -> ClassificationData:
    data = cifar.load_cifar(folder, name)
    if len(data.classes) != FACTS[data.name].num_classes:
        raise PruneoptError(f"{data.root}: {len(data.classes)} class names in its meta file, {data.name} has "
                            f"{FACTS[data.name].num_classes}")
    return ClassificationData(FACTS[data.name], data.root, data.train, data.test, data.classes)


def _image_folder(folder: str, val_fraction: float, seed: int) -> ClassificationData:
    data = scan_folder(folder, val_fraction, seed)
    seen = probe(data.train, seed)
    facts = DataFacts("image folder", len(data.classes), seen.size, seen.channels, sample=seen.sample)
    return ClassificationData(facts, data.root, data.train, data.test, data.classes, layout=data.layout)


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
                                    "or their parent; or $PRUNEOPT_DATA), or give that folder as --data")
        try:
            return _cifar(folder, data)
        except DataNotFoundError as exc:
            raise DataNotFoundError(f"{exc} (from $PRUNEOPT_DATA)" if data_dir is None else str(exc)) from None
    if data_dir is not None:
        raise PruneoptError(f"--data-dir is for --data {', '.join(NAMED)}; a CIFAR or image folder is given as "
                            f"--data itself (got --data {data} --data-dir {data_dir})")
    if not Path(data).is_dir():
        raise DataNotFoundError(f"--data {data}: neither {', '.join(NAMED)} nor a folder (an image folder or a "
                                "CIFAR python-pickle folder)")
    if cifar.detect(data) is not None:
        return _cifar(data, None)
    return _image_folder(data, val_fraction, seed + 1)
