"""Tiny generated classification data for the tests: image folders (PNG/JPEG, class = the dominant colour) and
CIFAR python-pickle folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40))


def image(label: int, rng: np.random.Generator, size: tuple[int, int] = (36, 40), grey: bool = False) -> Image.Image:
    """A learnable image: noise around the class's colour (or grey level)."""
    h, w = size
    base = np.array(COLOURS[label % len(COLOURS)], dtype=np.int16)
    arr = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img.convert("L") if grey else img


def make_image_folder(root: Path, classes: int = 3, per_class: int = 24, held_out: int | None = 6,
                      size: tuple[int, int] = (36, 40), grey: bool = False, suffix: str = ".png") -> Path:
    """``root/train/c{k}/*`` and ``root/val/c{k}/*`` (``held_out`` images a class), or one tree
    ``root/c{k}/*`` when ``held_out`` is None."""
    rng = np.random.default_rng(0)
    splits = [("train", per_class), ("val", held_out)] if held_out is not None else [("", per_class)]
    for split, n in splits:
        for c in range(classes):
            folder = root / split / f"c{c}" if split else root / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image(c, rng, size, grey).save(folder / f"{i:03d}{suffix}")
    return root


def make_cifar(root: Path, kind: str = "cifar10", per_batch: int = 20, sub: bool = True) -> Path:
    """A CIFAR-10 (five training batches) or CIFAR-100 folder of random images, pickled like the originals."""
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python") if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    n_classes = 10 if kind == "cifar10" else 100
    key = "labels" if kind == "cifar10" else "fine_labels"

    def batch(n: int) -> dict[bytes, object]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return {b"data": data, key.encode(): [int(i % n_classes) for i in range(n)], b"batch_label": b"x"}

    files = [f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else ["train"]
    for name in files:
        (folder / name).write_bytes(pickle.dumps(batch(per_batch), protocol=2))
    (folder / ("test_batch" if kind == "cifar10" else "test")).write_bytes(pickle.dumps(batch(per_batch), protocol=2))
    names = {b"label_names" if kind == "cifar10" else b"fine_label_names":
             [f"k{i}".encode() for i in range(n_classes)]}
    (folder / ("batches.meta" if kind == "cifar10" else "meta")).write_bytes(pickle.dumps(names, protocol=2))
    return folder
