"""Fashion-MNIST (Xiao et al. 2017) from its standard IDX files.

The four files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and
``t10k-labels-idx1-ubyte.gz`` (gzipped or not) are looked for in the ``data_dir`` argument (``--data-dir``) when one
is given -- there only: a folder that does not hold them is an error, never a silent fallback to another copy --
and otherwise, in order, in:

1. ``$PRUNEOPT_DATA``,
2. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package),
3. the user cache, ``$XDG_CACHE_HOME/pruneopt/fashion-mnist`` (default ``~/.cache/pruneopt/fashion-mnist``),

each as given and with the sub-folders ``fashion-mnist/`` and ``FashionMNIST/raw/`` (torchvision's layout). Only
when ``download=True`` (and no ``data_dir`` is given) are missing files fetched, from the dataset's official
mirror, into the user cache, and checked against the published MD5 sums. Otherwise a :class:`DataNotFoundError`
names every place searched and how to get the files.

The validation split is carved from the training set, deterministically and stratified by class
(:func:`~.splits.train_val_split`): val scores candidates during a search, test is kept for the final number only.

This module does not import torch: the serving side (``reidserve demo-gallery``) reads the same files with it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, PruneoptError
from .splits import Split, train_val_split

__all__ = ["CLASSES", "MEAN", "STD", "FashionMNIST", "Split", "load_fashion_mnist", "locate", "read_idx", "read_split",
           "search_dirs", "train_val_split"]

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_images": ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # of the training images scaled to [0, 1]
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBDIRS = ("", "fashion-mnist", "FashionMNIST/raw")
HOW_TO_GET_FILES = (
    "get the four IDX files with 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or from "
    "https://github.com/zalandoresearch/fashion-mnist into one of those folders"
)
HOW_TO_GET = HOW_TO_GET_FILES + ", or pass --download"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pruneopt" / "fashion-mnist"


def search_roots(data_dir: str | Path | None = None) -> list[Path]:
    """The places the loader looks in, in order (each also with the sub-folders in ``SUBDIRS``): ``data_dir`` alone
    when it is given."""
    if data_dir is not None:
        return [Path(data_dir)]
    roots: list[Path] = []
    if os.environ.get("PRUNEOPT_DATA"):
        roots.append(Path(os.environ["PRUNEOPT_DATA"]))
    return roots + [SYSTEM_DIR, cache_dir()]


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Every folder the loader looks in, in order."""
    return [root / sub if sub else root for root in search_roots(data_dir) for sub in SUBDIRS]


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def locate(data_dir: str | Path | None = None, splits: tuple[str, ...] = ("train", "test")) -> Path | None:
    """The first searched folder holding the files of ``splits`` (default: all four), or None."""
    stems = [stem for key, (stem, _) in FILES.items() if key.split("_")[0] in splits]
    for folder in search_dirs(data_dir):
        if all(_find(folder, stem) for stem in stems):
            return folder
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a uint8 array of its declared shape."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise PruneoptError(f"{p}: cannot read IDX file: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise PruneoptError(f"{p}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PruneoptError(f"{p}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(shape)):
        raise PruneoptError(f"{p}: IDX body has {body.size} bytes, header declares shape {shape}")
    return body.reshape(shape).copy()  # writable, and independent of the file buffer


def download(dest: Path | None = None, mirror: str = MIRROR, timeout: float = 30.0) -> Path:
    """Fetch the four files from the official mirror into ``dest`` (the user cache), verifying MD5 sums."""
    dest = dest or cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for stem, md5 in FILES.values():
        target = dest / (stem + ".gz")
        if target.is_file() and _md5(target) == md5:
            continue
        url = mirror + stem + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, tempfile.NamedTemporaryFile(
                dir=dest, delete=False
            ) as tmp:
                shutil.copyfileobj(resp, tmp)
        except (urllib.error.URLError, OSError) as exc:
            raise DataNotFoundError(f"download of {url} failed ({exc}); {HOW_TO_GET}") from exc
        if _md5(Path(tmp.name)) != md5:
            Path(tmp.name).unlink(missing_ok=True)
            raise DataNotFoundError(f"download of {url} has the wrong MD5 sum (expected {md5})")
        Path(tmp.name).replace(target)
    return dest


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FashionMNIST:
    train: Split
    test: Split
    root: Path

    num_classes = 10
    input_shape = (1, 28, 28)
    classes = CLASSES


def not_found(data_dir: str | Path | None = None) -> DataNotFoundError:
    """The error that names every place searched and how to get the files."""
    places = ", ".join(str(p) for p in search_roots(data_dir))
    if data_dir is not None:
        return DataNotFoundError(
            f"Fashion-MNIST not found in --data-dir {data_dir} (looked in it and in its fashion-mnist/ and "
            "FashionMNIST/raw/ sub-folders for the four IDX files; with --data-dir no other place is searched); "
            "get them with 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu, then leave --data-dir out), or "
            "from https://github.com/zalandoresearch/fashion-mnist into it"
        )
    return DataNotFoundError(
        f"Fashion-MNIST not found; looked in {places} (each also under fashion-mnist/ and FashionMNIST/raw/); "
        f"{HOW_TO_GET}"
    )


def read_split(folder: Path, split: str) -> Split:
    """The ``"train"`` or ``"test"`` split found in ``folder`` (see :func:`locate`), checked for consistency."""
    images, labels = (read_idx(_find(folder, FILES[f"{split}_{kind}"][0]) or folder / FILES[f"{split}_{kind}"][0])
                      for kind in ("images", "labels"))
    out = Split(images, labels.astype(np.int64))
    if out.images.ndim != 3 or len(out.images) != len(out.labels):
        raise PruneoptError(f"{folder}: {split} images {out.images.shape} and labels {out.labels.shape} do not match")
    if out.labels.size and (out.labels.min() < 0 or out.labels.max() >= 10):
        raise PruneoptError(f"{folder}: {split} labels outside 0..9")
    return out


def load_fashion_mnist(data_dir: str | Path | None = None, download_missing: bool = False) -> FashionMNIST:
    """Load the train and test splits; see the module docstring for where the files are looked for."""
    folder = locate(data_dir)
    if folder is None and download_missing and data_dir is None:
        folder = download()
    if folder is None:
        raise not_found(data_dir)
    return FashionMNIST(read_split(folder, "train"), read_split(folder, "test"), folder)

