"""``POST /v1/search``: top-k gallery items for an image or an embedding, and the answer the JSON fast path
(:mod:`..fastpath`) gives for well-formed embedding queries without the route."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from ..dependencies import Access, State
from ..fastpath import JSON_TYPES
from ..payloads import (
    ERROR_RESPONSES,
    check_form_fields,
    form,
    form_text,
    json_body,
    json_object,
    media,
    reply,
    request_body,
    unsupported,
    uploaded_files,
    validation_errors,
)
from ..preprocess import decode_base64
from ..schemas import HitOut, SearchFilterIn, SearchRequest, SearchResponse, SearchUpload
from ..state import ServiceState
from ..store import SearchFilter, normalize_embedding

__all__ = ["answer_search", "fast_search", "router", "search"]


async def search(request: Request, state: State) -> Response:
    t0 = time.perf_counter()
    kind = media(request)
    image: bytes | None = None
    embedding: list[float] | None = None
    if kind in JSON_TYPES:
        req: SearchRequest = await json_body(request, SearchRequest)
        k, flt_in = req.k, req.filter
        if req.image is not None:
            image = decode_base64(req.image, "image")
        embedding = req.embedding
    elif kind == "multipart/form-data":
        data = await form(request, 1, state.settings.max_body_bytes)
        blobs = await uploaded_files(data, ("image", "images"))
        if len(blobs) != 1:
            raise HTTPException(422, "send exactly one query image as a multipart file part named 'image'")
        check_form_fields(data, SearchUpload, also=("images",))
        image = blobs[0]
        try:
            k_text = form_text(data, "k")
            up = SearchRequest.model_validate({"embedding": [1.0], "k": int(k_text) if k_text else 10,
                                               "filter": json_object(form_text(data, "filter"), "filter")})
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                raise RequestValidationError(validation_errors(exc)) from None
            raise HTTPException(422, f"form field 'k' must be an integer ({exc})") from None
        k, flt_in = up.k, up.filter
    else:
        raise unsupported(kind)
    return reply(await answer_search(state, t0, k, flt_in, image=image, embedding=embedding))


async def answer_search(state: ServiceState, t0: float, k: int, flt_in: SearchFilterIn | None, *,
                        image: bytes | None = None, embedding: list[float] | None = None) -> SearchResponse:
    """Search the gallery for one image or embedding (``t0``: when the request arrived, for ``took_ms``)."""
    if k > state.settings.max_k:
        raise HTTPException(422, f"k={k} is above this server's limit of {state.settings.max_k} (--max-k)")
    _, store = state.running()
    if image is not None:
        q = (await state.embed_images([image], ["image"]))[0]
    else:
        q = normalize_embedding(embedding, state.dim, "embedding")
    flt = _to_filter(flt_in)
    t1 = time.perf_counter()
    quick = getattr(store, "try_search", None)  # answer cheap searches on the loop, without a thread hop
    hits = quick(q[None], k, flt) if quick is not None else None
    if hits is None:
        searcher = state.searcher
        if searcher is None:
            raise HTTPException(503, "the service is starting or stopping; retry shortly")
        found = await searcher.search(q, k, flt)  # micro-batched with concurrent requests
    else:
        found = hits[0]
    state.metrics.search.observe(time.perf_counter() - t1)
    return SearchResponse(
        hits=[HitOut(id=h.id, score=h.score, camera=h.camera, time=h.time, metadata=h.metadata) for h in found],
        k=k, gallery_size=store.count(), took_ms=round((time.perf_counter() - t0) * 1000, 3))


async def fast_search(state: ServiceState, req: SearchRequest) -> bytes | None:
    """The JSON embedding query of :class:`~..fastpath.JsonFastPath`; image queries take the route (None)."""
    if req.embedding is None:
        return None
    res = await answer_search(state, time.perf_counter(), req.k, req.filter, embedding=req.embedding)
    return res.model_dump_json().encode()


def _to_filter(flt: SearchFilterIn | None) -> SearchFilter | None:
    if flt is None:
        return None
    return SearchFilter(cameras=frozenset(flt.cameras) if flt.cameras is not None else None,
                        exclude_cameras=frozenset(flt.exclude_cameras), time_min=flt.time_min,
                        time_max=flt.time_max, exclude_ids=frozenset(flt.exclude_ids))


def router(access: Access) -> APIRouter:
    r = APIRouter(tags=["search"])
    r.add_api_route("/v1/search", search, methods=["POST"], response_model=SearchResponse, dependencies=access.read,
                    responses=ERROR_RESPONSES, summary="Top-k gallery items for an image or an embedding",
                    openapi_extra=request_body(("application/json", SearchRequest),
                                               ("multipart/form-data", SearchUpload)))
    return r
