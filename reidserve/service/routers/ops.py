"""Operations: ``GET /v1/stats``, ``/v1/limits``, ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz``
(readiness).

``/v1/limits`` says what one request may carry (``--max-k``, ``--max-images``, ``--max-items``, ``--max-body-mb``,
``--max-pixels``) and how many images one model run takes, so that a client checks its requests, and sizes bulk
uploads, before sending them.

``/v1/stats`` shows where the service runs -- its process id, the data folder (or Milvus URI), the model file --
only to callers that present a valid token (or to everyone under ``--auth none``, where every caller may also
change the gallery); for the others those fields are ``null``.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..dependencies import Access, State
from ..schemas import HealthResponse, LimitsResponse, ReadyResponse

__all__ = ["VERSION", "healthz", "limits", "metrics", "readyz", "router", "stats"]

VERSION = "0.1.0"


async def stats(request: Request, state: State) -> dict[str, Any]:
    embedder, store = state.running()
    assert state.model is not None
    gallery = await anyio.to_thread.run_sync(store.stats)
    model = state.model.describe()
    trusted = state.authorized(request.headers.get("authorization"), write=True)  # a valid token, or --auth none
    if not trusted:  # where the files are (the Milvus URI: a file path for Milvus Lite)
        model["path"] = None
        for key in ("data_dir", "uri"):
            if key in gallery:
                gallery[key] = None
    return {"version": VERSION, "pid": os.getpid() if trusted else None,
            "uptime_s": round(time.time() - state.started, 1),
            "torch_loaded": "torch" in sys.modules, "auth": state.settings.auth, "model": model,
            "batching": embedder.stats(),
            "search_batching": state.searcher.stats() if state.searcher is not None else None,
            "search_fast_path": dict(state.fast_search),
            "gc": {"frozen_objects": gc.get_freeze_count(),
                   "collections": [g["collections"] for g in gc.get_stats()]},
            "gallery": gallery, "limits": state.settings.limits()}


async def limits(state: State) -> LimitsResponse:
    s = state.settings
    model_batch = state.model.max_batch if state.model is not None else s.max_batch
    return LimitsResponse(max_k=s.max_k, max_images=s.max_images, max_items=s.max_items,
                          max_body_bytes=s.max_body_bytes, max_pixels=s.max_pixels, max_batch=model_batch)


async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(state: State) -> JSONResponse:
    reasons = []
    if not state.ready:
        reasons.append("starting or stopping")
    if state.embedder is None or not state.embedder.running:
        reasons.append("the embedding worker is not running")
    if state.store is None:
        reasons.append("the gallery is not open")
    if state.searcher is None or not state.searcher.running:
        reasons.append("the search worker is not running")
    return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=200 if not reasons else 503)


def router(access: Access) -> APIRouter:
    r = APIRouter(tags=["ops"])
    r.add_api_route("/v1/stats", stats, methods=["GET"], dependencies=access.read,
                    summary="Model, batching and gallery facts")
    r.add_api_route("/v1/limits", limits, methods=["GET"], response_model=LimitsResponse, dependencies=access.read,
                    summary="What one request may carry (k, images, items, body size, pixels)")
    r.add_api_route("/metrics", metrics, methods=["GET"], dependencies=access.read, summary="Prometheus metrics",
                    response_class=Response)
    r.add_api_route("/healthz", healthz, methods=["GET"], response_model=HealthResponse, summary="Liveness")
    r.add_api_route("/readyz", readyz, methods=["GET"], response_model=ReadyResponse, summary="Readiness",
                    responses={503: {"model": ReadyResponse, "description": "not ready"}})
    return r
