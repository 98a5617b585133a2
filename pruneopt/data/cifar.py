"""CIFAR-10 and CIFAR-100 in their python-pickle folder format, read with the standard library and numpy.

The folders as distributed: ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta``) and ``cifar-100-python/`` (``train``, ``test``, ``meta``; the 100 fine labels are used). A folder
is recognised by its files, given directly or as its parent (``--data DIR`` where ``DIR/cifar-10-batches-py``
exists). The pickles are read with an unpickler that accepts nothing but plain containers and numpy arrays, so a
tampered file cannot run code. Images come out as uint8 ``[N, 32, 32, 3]`` (RGB). Nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataNotFoundError, PruneoptError
from .splits import Split

NAMES = ("cifar10", "cifar100")
LAYOUTS = {  # name -> (sub-folder as distributed, training files, test file, meta file, label key, names key)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names"),
}
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}


class _DataOnly(pickle.Unpickler):
    """Plain containers, strings, numbers and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


@dataclass(frozen=True)
class CifarData:
    train: Split
    test: Split
    classes: tuple[str, ...]
    root: Path
    name: str


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = _DataOnly(io.BytesIO(f.read()), encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise PruneoptError(f"{path}: cannot read this CIFAR file ({exc})") from None
    if not isinstance(raw, dict):
        raise PruneoptError(f"{path}: not a CIFAR pickle (a {type(raw).__name__}, not a dict)")
    return {_text(k): v for k, v in raw.items()}


def detect(folder: str | os.PathLike[str]) -> tuple[str, Path] | None:
    """``(name, folder holding the files)`` when ``folder`` (or its distributed sub-folder) is a CIFAR folder."""
    root = Path(folder)
    for name, (sub, train_files, test_file, meta, *_rest) in LAYOUTS.items():
        for candidate in (root, root / sub):
            if all((candidate / f).is_file() for f in (*train_files, test_file, meta)):
                return name, candidate
    return None


def _split(folder: Path, files: tuple[str, ...], label_key: str, n_classes: int) -> Split:
    images, labels = [], []
    for name in files:
        d = _read(folder / name)
        if "data" not in d or label_key not in d:
            raise PruneoptError(f"{folder / name}: a CIFAR batch needs 'data' and '{label_key}'")
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise PruneoptError(f"{folder / name}: 'data' has shape {data.shape}, expected [N, 3072]")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(d[label_key], dtype=np.int64))
        if len(labels[-1]) != len(data):
            raise PruneoptError(f"{folder / name}: {len(data)} images but {len(labels[-1])} labels")
    out = Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))
    if out.labels.size and (out.labels.min() < 0 or out.labels.max() >= n_classes):
        raise PruneoptError(f"{folder}: labels outside 0..{n_classes - 1}")
    return out


def load_cifar(folder: str | os.PathLike[str], name: str | None = None) -> CifarData:
    """CIFAR-10 or CIFAR-100 from ``folder`` (``name`` checks which one it must be)."""
    found = detect(folder)
    if found is None or (name is not None and found[0] != name):
        want = name or "CIFAR-10 or CIFAR-100"
        files = {n: ", ".join((*LAYOUTS[n][1][:1], "...", LAYOUTS[n][2], LAYOUTS[n][3])) for n in LAYOUTS}
        raise DataNotFoundError(
            f"{folder} does not hold {want} in the python-pickle format (cifar10: {files['cifar10']} in it or in "
            f"cifar-10-batches-py/; cifar100: {files['cifar100']} in it or in cifar-100-python/); nothing is "
            "downloaded: get the python version from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it")
    kind, root = found
    _sub, train_files, test_file, meta_file, label_key, names_key = LAYOUTS[kind]
    meta = _read(root / meta_file)
    classes = tuple(str(_text(c)) for c in meta.get(names_key, []))
    n_classes = len(classes) or (10 if kind == "cifar10" else 100)
    return CifarData(_split(root, train_files, label_key, n_classes), _split(root, (test_file,), label_key, n_classes),
                     classes or tuple(str(i) for i in range(n_classes)), root, kind)
