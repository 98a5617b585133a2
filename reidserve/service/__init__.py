"""``reidserve serve``: a durable, authenticated re-ID retrieval service (FastAPI + ONNX Runtime/TensorRT + FAISS).

Modules: :mod:`.app` (the HTTP API, ``create_app``), :mod:`.embedder` (model loading, micro-batching),
:mod:`.search_batcher` (micro-batched gallery searches), :mod:`.preprocess` (safe image decoding, numpy/PIL),
:mod:`.store` (the ``GalleryStore`` protocol, ``open_store``),
:mod:`.sqlite_store` and :mod:`.faiss_index` (SQLite WAL + FAISS, snapshots, replay), :mod:`.milvus_store`
(Milvus / Milvus Lite), :mod:`.auth` (bearer tokens), :mod:`.middleware` (body limit, Prometheus metrics),
:mod:`.process` (run a server in a subprocess: tests, benchmarks), :mod:`.demo` (fill a gallery for a demo).

Nothing here imports torch; names below load their module on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ServiceConfig": "config",
    "ServiceState": "app",
    "create_app": "app",
    "GalleryStore": "store",
    "GalleryRecord": "store",
    "SearchFilter": "store",
    "open_store": "store",
    "ServerProcess": "process",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'reidserve.service' has no attribute {name!r}")
