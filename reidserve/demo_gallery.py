"""Fill a running service's gallery for a demo (client side; numpy and PIL only, no torch).

* :func:`fill_fashion_mnist`: the first ``count`` Fashion-MNIST *test* images as items ``fmnist-NNNNN`` with their
  label and class name as metadata, and optionally the next ``queries`` images written as PNG query files
  (``q-NNNNN-<label>-<class>.png``), which are not in the gallery. The IDX files are read with numpy from the
  places ``pruneopt.data`` looks in (``--fmnist-dir``, ``$PRUNEOPT_DATA``, ``/usr/share/datasets/fashion-mnist``,
  ``~/.cache/pruneopt/fashion-mnist``, each also with ``fashion-mnist/`` and ``FashionMNIST/raw/``).
* :func:`fill_folder`: every image of a folder as an item named after the file; Market-1501 style names
  (``0001_c2s1_000151_00.jpg``) also give the camera (``c2``) and person id (``pid`` metadata).

Both send through the bulk import (:mod:`reidserve.gallery_import`: several items per request, several requests in
flight, items already in the gallery skipped), as ``reidserve query import`` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pruneopt.data import fashion_mnist
from pruneopt.data.fashion_mnist import CLASSES

from .client import ReidClient
from .errors import ReidserveError
from .gallery_import import import_items
from .import_sources import ImportItem, ImportSourceError, list_items

__all__ = ["CLASSES", "DemoDataError", "fill_fashion_mnist", "fill_folder", "read_fashion_mnist_test"]



class DemoDataError(ReidserveError):
    """Demo data that cannot be found or read; the message says where it was looked for."""


def read_fashion_mnist_test(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images [10000, 28, 28] uint8, labels [10000])`` of the Fashion-MNIST test set, from the places
    :mod:`pruneopt.data.fashion_mnist` looks in (``data_dir`` first)."""
    folder = fashion_mnist.locate(data_dir, splits=("test",))
    if folder is None:
        looked = ", ".join(map(str, fashion_mnist.search_dirs(data_dir)))
        raise DemoDataError("the Fashion-MNIST test files (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) "
                            f"are not in any of: {looked}; install Debian's dataset-fashion-mnist or pass --fmnist-dir")
    test = fashion_mnist.read_split(folder, "test")
    return test.images, test.labels


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def fill_fashion_mnist(client: ReidClient, *, count: int = 1000, batch: int = 64, data_dir: Path | None = None,
                       queries_out: Path | None = None, queries: int = 5,
                       log: Callable[[str], None] = lambda m: None) -> tuple[int, list[Path]]:
    """Add the first ``count`` test images to the gallery of ``client`` (a :class:`reidserve.client.ReidClient`)
    through the bulk import (those already there are skipped); write ``queries`` held-out images to
    ``queries_out``. Returns (items added, query files written)."""
    x, y = read_fashion_mnist_test(data_dir)
    count = min(count, len(x))
    items = [ImportItem(f"fmnist-{i:05d}", x[i], metadata={"label": int(y[i]), "class": CLASSES[int(y[i])]},
                        label=f"Fashion-MNIST test image {i}") for i in range(count)]
    report = import_items(client, items, batch=batch)
    log(report.summary())
    written: list[Path] = []
    if queries_out is not None and queries:
        from PIL import Image  # lazy: Pillow only when query files are written

        queries_out.mkdir(parents=True, exist_ok=True)
        for i in range(count, min(len(x), count + queries)):
            p = queries_out / f"q-{i:05d}-{int(y[i])}-{_slug(CLASSES[int(y[i])])}.png"
            Image.fromarray(x[i]).save(p)
            written.append(p)
    return report.sent, written


def fill_folder(client: ReidClient, folder: Path, *, count: int = 1000, batch: int = 64,
                log: Callable[[str], None] = lambda m: None) -> int:
    """Add up to ``count`` images of ``folder`` (sorted by name; a Market-1501 layout's gallery) as items named
    after their files, through the bulk import (those already there are skipped)."""
    try:
        _, items = list_items(folder)
    except ImportSourceError as exc:
        raise DemoDataError(str(exc)) from None
    report = import_items(client, items[:count], batch=batch)
    log(report.summary())
    return report.sent
