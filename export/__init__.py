"""Verified ONNX export, TensorRT engines, runtime runners and side-by-side benchmarks of pruneopt networks.

* :mod:`export.onnx` -- ``export_onnx`` / ``verify_onnx`` (imports torch);
* :mod:`export.metadata` -- ``read_metadata``, ``load_onnx`` (safe loading), graph checks (onnx only);
* :mod:`export.fp16` -- float16 ONNX for strongly typed TensorRT networks (onnx only);
* :mod:`export.tensorrt` -- ``build_engine``, ``load_engine``, ``TrtRunner`` (TensorRT imported lazily);
* :mod:`export.runners` -- the ``Runner`` protocol and ``make_runner`` (torch only inside the torch runner);
* :mod:`export.bench` -- ``run_bench`` (``pruneopt bench``).

This package imports nothing heavy itself; the names below load their module on first use, so that
``from export import make_runner`` in a service does not pull torch in.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "export_onnx": "onnx",
    "verify_onnx": "onnx",
    "read_metadata": "metadata",
    "load_onnx": "metadata",
    "ExportMetadata": "metadata",
    "convert_to_fp16": "fp16",
    "build_engine": "tensorrt",
    "load_engine": "tensorrt",
    "TrtRunner": "tensorrt",
    "make_runner": "runners",
    "Runner": "runners",
    "run_bench": "bench",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
