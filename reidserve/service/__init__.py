"""``reidserve serve``: a durable, authenticated re-ID retrieval service (FastAPI + ONNX Runtime/TensorRT + FAISS).

Modules: :mod:`.settings` (every ``reidserve serve`` option: flags, ``REIDSERVE_*`` variables), :mod:`.app` (the
FastAPI app, ``create_app``), :mod:`.routers` (one router per resource), :mod:`.dependencies` (state and token
checks), :mod:`.state` (the resources of a running service), :mod:`.payloads` (reading JSON / multipart bodies),
:mod:`.fastpath` (JSON searches without FastAPI's per-request layers), :mod:`.server` (uvicorn on a bound socket),
:mod:`.read_timeouts` (time limits on reading a request),
:mod:`.embedder` (model loading, micro-batching), :mod:`.search_batcher` (micro-batched gallery searches),
:mod:`.preprocess` (safe image decoding, numpy/PIL), :mod:`.store` (the ``GalleryStore`` protocol),
:mod:`.backends` (``open_store``: a backend from a store URL), :mod:`.sqlite_store`, :mod:`.sqlite_db`,
:mod:`.filtered_search` and :mod:`.faiss_index` (SQLite WAL + FAISS, snapshots, replay), :mod:`.milvus_store`
(Milvus / Milvus Lite), :mod:`.auth` (bearer tokens), :mod:`.middleware` (body limit, header rules, metrics),
:mod:`.process` (run a server in a subprocess: tests, benchmarks). Filling a gallery for a demo is client side:
:mod:`reidserve.demo_gallery`.

Nothing here imports torch; names below load their module on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ServiceSettings": "settings",
    "ServiceState": "state",
    "create_app": "app",
    "GalleryStore": "store",
    "GalleryRecord": "store",
    "SearchFilter": "store",
    "open_store": "backends",
    "ServerProcess": "process",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'reidserve.service' has no attribute {name!r}")
