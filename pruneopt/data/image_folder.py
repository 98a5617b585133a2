"""Image-folder data sets: one folder per class, in one of two layouts.

* ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (``test/`` also accepted for ``val/``): ImageNet's layout.
  ``val/`` gives the final (test) figures; the candidates are scored on images held out of ``train/``;
* ``ROOT/<class>/*`` (or ``ROOT/train/<class>/*`` alone): one tree, split by class-stratified, seeded draws --
  ``val_fraction`` of every class for the test figures, then, like every data source, ``val_fraction`` of the rest
  for scoring candidates.

Images are the files ending in ``.jpg``, ``.jpeg``, ``.png``, ``.webp`` or ``.bmp`` anywhere below a class folder
(sorted by path); classes are the class folders' names in sorted order (labels 0..K-1, as torchvision's
``ImageFolder`` numbers them). An empty class folder, a class of ``val/`` that ``train/`` lacks, or a root with no
class folder is a one-line error. Scanning reads names only; :func:`probe` decodes a seeded sample of the training
images to find the typical size, whether the images are grey, and their mean and standard deviation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataNotFoundError, PruneoptError
from .images import (
    GREY_MODES,
    IMAGE_SUFFIXES,
    LARGE_INPUT,
    BadImageError,
    Transform,
    decode,
    is_image,
    style_for,
)
from .splits import FileSplit, stratified_mask

HELD_OUT = ("val", "test")
REID_LAYOUTS = (("bounding_box_train", "query"), ("list_train.txt", "list_query.txt"))  # Market-1501, MSMT17
DEFAULT_LARGE = (224, 224)  # the input size of ImageNet-sized images


@dataclass(frozen=True)
class FolderData:
    """The training and test files of an image folder and its class names."""

    train: FileSplit
    test: FileSplit
    classes: tuple[str, ...]
    root: Path
    layout: str  # "train/val" or "one tree"


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images_below(folder: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image(f))
    return found


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    """(class names, files, labels) of a class-per-folder tree; with ``classes``, labels follow that list and every
    class folder must be one of them."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataNotFoundError(f"{folder} holds no class folders (an image folder is ROOT/<class>/<images> or "
                                "ROOT/train/<class>/... with ROOT/val/<class>/...)")
    names = [d.name for d in dirs]
    if classes is not None:
        extra = [n for n in names if n not in classes]
        if extra:
            raise PruneoptError(f"{folder}: class folder(s) {', '.join(extra[:3])} are not in "
                                f"{folder.parent / 'train'} (a held-out class must be a training class)")
    index = {n: i for i, n in enumerate(classes if classes is not None else names)}
    files: list[str] = []
    labels: list[int] = []
    for d in dirs:
        found = _images_below(d)
        if not found:
            raise PruneoptError(f"{d}: empty class folder (no {', '.join(IMAGE_SUFFIXES)} files)")
        files += found
        labels += [index[d.name]] * len(found)
    return names, files, labels


def scan_folder(root: str | os.PathLike[str], val_fraction: float = 1 / 6, seed: int = 0) -> FolderData:
    """The training and test files of the image folder at ``root`` (see the module docstring)."""
    base = Path(root)
    if not base.is_dir():
        raise DataNotFoundError(f"--data {root}: not a folder")
    if any(all((base / name).exists() for name in names) for names in REID_LAYOUTS):
        raise PruneoptError(f"--data {root} looks like a re-ID dataset (bounding_box_train/, query/...), not "
                            "class folders: is it the data of another --task (--task reid)?")
    held = next((base / n for n in HELD_OUT if (base / n).is_dir()), None)
    if (base / "train").is_dir() and held is not None:
        classes, files, labels = _scan(base / "train")
        _, test_files, test_labels = _scan(held, classes)
        train = FileSplit(tuple(files), np.array(labels, dtype=np.int64))
        test = FileSplit(tuple(test_files), np.array(test_labels, dtype=np.int64))
        return FolderData(train, test, tuple(classes), base, "train/val")
    tree = base / "train" if (base / "train").is_dir() else base
    classes, files, labels = _scan(tree)
    everything = FileSplit(tuple(files), np.array(labels, dtype=np.int64))
    mask = stratified_mask(everything.labels, val_fraction, seed)
    return FolderData(everything.take(~mask), everything.take(mask), tuple(classes), base, "one tree")


@dataclass(frozen=True)
class Probe:
    """What a sample of training images says: the natural input size, grey or colour, and pixel statistics."""

    size: tuple[int, int]  # H, W the network takes
    channels: int  # 1 when every sampled image is grey, else 3
    sample: np.ndarray  # the sampled images at ``size`` (uint8, [N, H, W] grey or [N, H, W, 3])


def probe(train: FileSplit, seed: int = 0, max_small: int = 2048, max_large: int = 256) -> Probe:
    """Decode a seeded sample of ``train``: inputs take the images' median size when its shorter side is under
    ``LARGE_INPUT`` pixels (28x28, 32x32...), else 224x224. Undecodable images are left out here (training reports
    or skips them)."""
    order = np.random.default_rng(seed).permutation(len(train))
    decoded: list[Image.Image] = []
    limit = max_small
    for i in order:
        try:
            decoded.append(decode(train.paths[i]))
        except BadImageError:
            continue
        if len(decoded) == 16 and _shorter_side(decoded) >= LARGE_INPUT:
            limit = max_large
        if len(decoded) >= limit:
            break
    if not decoded:
        raise PruneoptError(f"none of the training images could be decoded (e.g. {train.paths[order[0]]})")
    if _shorter_side(decoded) < LARGE_INPUT:
        size = (int(np.median([im.height for im in decoded])), int(np.median([im.width for im in decoded])))
    else:
        size = DEFAULT_LARGE
    transform = Transform(size, "RGB", style_for(size))
    grey = all(im.mode in GREY_MODES for im in decoded)
    sample = np.stack([transform.eval(im.convert("RGB")).transpose(1, 2, 0) for im in decoded])
    return Probe(size, 1 if grey else 3, sample[..., 0] if grey else sample)


def _shorter_side(images: list[Image.Image]) -> float:
    return float(np.median([min(im.size) for im in images]))
