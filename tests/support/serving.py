"""Helpers for the service's tests and benchmarks (``bench/load.py``): small exported models and synthetic images.

:func:`export_models` exports, in a subprocess (so the calling process does not import torch), untrained
pruneopt networks through :func:`export.onnx.export_onnx` -- the code path of ``pruneopt export --onnx``, here with
the legacy exporter (faster) and verification at batch 1 and 3 -- and caches them in a folder:

* ``embed.onnx``: resnet20, features only (global-average-pooled embedding, not normalised), RGB 3x64x32;
* ``fmnist.onnx``: resnet20 classifier, grayscale 1x28x28, 10 logits, Fashion-MNIST mean/std -- the shape of a
  ``pruneopt search`` winner.

Extra models can be asked for with :class:`ModelSpec` entries (e.g. a larger re-ID backbone for a benchmark).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_MODELS", "ModelSpec", "export_models", "png_bytes", "random_images"]


@dataclass(frozen=True)
class ModelSpec:
    """One model for :func:`export_models`: file name, architecture and export options."""

    name: str
    arch: str
    input_shape: tuple[int, int, int]
    features_only: bool = False
    num_classes: int | None = None
    last_stride: int | None = None
    normalize: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    exporter: str = "legacy"


DEFAULT_MODELS = (
    ModelSpec("embed.onnx", "resnet20", (3, 64, 32), features_only=True),
    ModelSpec("fmnist.onnx", "resnet20", (1, 28, 28), num_classes=10, mean=(0.2860,), std=(0.3530,)),
)

_SCRIPT = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
from export.onnx import export_onnx, load_model
torch.manual_seed(0)
for m in json.loads(sys.argv[1]):
    shape = tuple(m["input_shape"])
    model = load_model(None, m["arch"], in_chans=shape[0], num_classes=m["num_classes"],
                       last_stride=m["last_stride"], features_only=m["features_only"])
    export_onnx(model, m["path"], shape, exporter=m["exporter"], normalize=m["normalize"], mean=m["mean"],
                std=m["std"], batches=(1, 3))
"""


def export_models(folder: str | Path, models: tuple[ModelSpec, ...] = DEFAULT_MODELS,
                  timeout: float = 600.0) -> dict[str, Path]:
    """Export ``models`` into ``folder`` unless already there; returns ``{name: path}``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    todo = [dict(asdict(m), path=str(out / m.name)) for m in models if not (out / m.name).is_file()]
    if todo:
        proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(todo)], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"exporting test models failed:\n{proc.stderr[-4000:]}")
    return {m.name: out / m.name for m in models}


def random_images(n: int, height: int, width: int, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct ``uint8`` images (smooth blobs, so that embeddings differ more than for pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(n):
        img = np.zeros((height, width, channels), np.float32)
        for _ in range(4):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            r = rng.uniform(0.15, 0.5) * max(height, width)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(0, 255, size=channels)
        img += rng.normal(0, 8, size=img.shape)
        arr = np.clip(img, 0, 255).astype(np.uint8)
        out.append(arr[..., 0] if channels == 1 else arr)
    return out


def png_bytes(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """``image`` (``uint8`` HxW or HxWx3) encoded as ``fmt``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()
