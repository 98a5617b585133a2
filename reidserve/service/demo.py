"""Fill a running service's gallery for a demo (client side; numpy and PIL only, no torch).

* :func:`fill_fashion_mnist`: the first ``count`` Fashion-MNIST *test* images as items ``fmnist-NNNNN`` with their
  label and class name as metadata, and optionally the next ``queries`` images written as PNG query files
  (``q-NNNNN-<label>-<class>.png``), which are not in the gallery. The IDX files are read with numpy from the
  places ``pruneopt.data`` looks in (``--fmnist-dir``, ``$PRUNEOPT_DATA``, ``/usr/share/datasets/fashion-mnist``,
  ``~/.cache/pruneopt/fashion-mnist``, each also with ``fashion-mnist/`` and ``FashionMNIST/raw/``).
* :func:`fill_folder`: every image of a folder as an item named after the file; Market-1501 style names
  (``0001_c2s1_000151_00.jpg``) also give the camera (``c2``) and person id (``pid`` metadata).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pruneopt.data import fashion_mnist
from pruneopt.data.fashion_mnist import CLASSES

from ..errors import ReidserveError

__all__ = ["CLASSES", "DemoDataError", "fill_fashion_mnist", "fill_folder", "read_fashion_mnist_test"]

_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_MARKET = re.compile(r"^(-?\d+)_c(\d+)")


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


def fill_fashion_mnist(client: Any, *, count: int = 1000, batch: int = 64, data_dir: Path | None = None,
                       queries_out: Path | None = None, queries: int = 5,
                       log: Callable[[str], None] = lambda m: None) -> tuple[int, list[Path]]:
    """Add the first ``count`` test images to the gallery of ``client`` (a :class:`reidserve.client.ReidClient`);
    write ``queries`` held-out images to ``queries_out``. Returns (items added, query files written)."""
    x, y = read_fashion_mnist_test(data_dir)
    count = min(count, len(x))
    added = 0
    for start in range(0, count, batch):
        items = [client.item(f"fmnist-{i:05d}", image=x[i], metadata={"label": int(y[i]),
                                                                      "class": CLASSES[int(y[i])]})
                 for i in range(start, min(count, start + batch))]
        added += len(client.add_many(items)["items"])
        log(f"added {added}/{count}")
    written: list[Path] = []
    if queries_out is not None and queries:
        from PIL import Image

        queries_out.mkdir(parents=True, exist_ok=True)
        for i in range(count, min(len(x), count + queries)):
            p = queries_out / f"q-{i:05d}-{int(y[i])}-{_slug(CLASSES[int(y[i])])}.png"
            Image.fromarray(x[i]).save(p)
            written.append(p)
    return added, written


def fill_folder(client: Any, folder: Path, *, count: int = 1000, batch: int = 64,
                log: Callable[[str], None] = lambda m: None) -> int:
    """Add up to ``count`` images of ``folder`` (sorted by name) as items named after their files."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXT)[:count]
    if not files:
        raise DemoDataError(f"{folder} holds no .jpg/.png/.bmp/.webp images")
    added = 0
    for start in range(0, len(files), batch):
        items = []
        for p in files[start:start + batch]:
            m = _MARKET.match(p.stem)
            camera = f"c{m.group(2)}" if m else None
            meta = {"pid": int(m.group(1))} if m else {}
            items.append(client.item(re.sub(r"[^A-Za-z0-9_.:-]", "_", p.stem)[:128], image=p, camera=camera,
                                     metadata={**meta, "file": p.name[:1024]}))
        added += len(client.add_many(items)["items"])
        log(f"added {added}/{len(files)}")
    return added
