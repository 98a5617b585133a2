"""``POST /v1/gallery`` (upsert items by id), ``GET`` and ``DELETE /v1/gallery/{item_id}``, and ``POST
/v1/gallery/exists`` (which of these ids are in the gallery: what a resumed bulk import need not send again)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from ..dependencies import Access, State
from ..fastpath import JSON_TYPES
from ..payloads import (
    ERROR_RESPONSES,
    b64_all,
    check_form_fields,
    form,
    form_number,
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
from ..schemas import (
    ID_PATTERN,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    GalleryAddRequest,
    GalleryAddResponse,
    GalleryItemIn,
    GalleryItemOut,
    GalleryUpload,
    WriteOut,
)
from ..state import ServiceState
from ..store import GalleryRecord, normalize_embedding

__all__ = ["gallery_add", "gallery_delete", "gallery_exists", "gallery_get", "router"]


@dataclass
class _Item:
    """A gallery item as parsed from either content type: raw image bytes or an embedding."""

    id: str
    images: list[bytes]
    embedding: list[float] | None
    camera: str | None
    time: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


async def _parse_items(request: Request, state: ServiceState) -> list[_Item]:
    limits = state.settings
    kind = media(request)
    if kind in JSON_TYPES:
        req: GalleryAddRequest = await json_body(request, GalleryAddRequest)
        if len(req.items) > limits.max_items:
            raise HTTPException(413, f"{len(req.items)} items in one request; at most {limits.max_items} "
                                     "(--max-items)")
        out = []
        for i, it in enumerate(req.items):
            b64 = [it.image] if it.image is not None else (it.images or [])
            out.append(_Item(it.id, b64_all(b64, f"items[{i}].images"), it.embedding, it.camera, it.time,
                             it.metadata))
        return out
    if kind == "multipart/form-data":
        return [await _parse_upload(request, state)]
    raise unsupported(kind)


async def _parse_upload(request: Request, state: ServiceState) -> _Item:
    data = await form(request, state.settings.max_images, state.settings.max_body_bytes)
    fields: dict[str, Any] = {"id": form_text(data, "id"), "camera": form_text(data, "camera"),
                              "time": form_number(data, "time")}
    meta_text = form_text(data, "metadata")
    blobs = await uploaded_files(data, ("images", "image"))
    if not blobs:
        raise HTTPException(422, "no image files: send them as multipart file parts named 'images' (or post JSON "
                                 "with an embedding)")
    check_form_fields(data, GalleryUpload, also=("image",))
    try:
        meta = json_object(meta_text, "metadata")
        parsed = GalleryItemIn.model_validate({  # validated like JSON items; the embedding is a stand-in
            **{k: v for k, v in fields.items() if v is not None}, "embedding": [1.0],
            **({"metadata": meta} if meta is not None else {})})
    except ValidationError as exc:
        raise RequestValidationError(validation_errors(exc)) from None
    return _Item(parsed.id, blobs, None, parsed.camera, parsed.time, parsed.metadata)


async def gallery_add(request: Request, state: State) -> Response:
    items = await _parse_items(request, state)
    _, store = state.running()
    blobs, names, owners = [], [], []
    for i, it in enumerate(items):
        for j, b in enumerate(it.images):
            blobs.append(b)
            names.append(f"items[{i}].images[{j}]")
            owners.append(i)
    emb = await state.embed_images(blobs, names) if blobs else np.zeros((0, state.dim), np.float32)
    owner = np.asarray(owners, dtype=np.int64)
    records = []
    for i, it in enumerate(items):
        if it.embedding is not None:
            vec = normalize_embedding(it.embedding, state.dim, f"items[{i}].embedding")
        else:
            vec = normalize_embedding(emb[owner == i].mean(axis=0), state.dim, f"items[{i}] image embedding")
        records.append(GalleryRecord(it.id, vec, it.camera, it.time, it.metadata))
    results = await anyio.to_thread.run_sync(store.upsert, records)
    state.metrics.writes.labels("upsert").inc(len(results))
    return reply(GalleryAddResponse(items=[WriteOut(id=r.id, created=r.created, seq=r.seq) for r in results],
                                    gallery_size=store.count()))


ItemId = Path(pattern=ID_PATTERN, description="the item id")


async def gallery_get(state: State, item_id: str = ItemId, include_embedding: bool = Query(False)) -> Response:
    _, store = state.running()
    item = await anyio.to_thread.run_sync(store.get, item_id, include_embedding)
    if item is None:
        raise HTTPException(404, f"no gallery item with id {item_id!r}")
    return reply(GalleryItemOut(id=item.id, camera=item.camera, time=item.time, metadata=item.metadata,
                                seq=item.seq,
                                embedding=item.embedding.tolist() if item.embedding is not None else None))


async def gallery_delete(state: State, item_id: str = ItemId) -> Response:
    _, store = state.running()
    res = await anyio.to_thread.run_sync(store.delete, item_id)
    if res is None:
        raise HTTPException(404, f"no gallery item with id {item_id!r}")
    state.metrics.writes.labels("delete").inc()
    return reply(DeleteResponse(id=res.id, deleted=True, seq=res.seq, gallery_size=store.count()))


async def gallery_exists(request: Request, state: State) -> Response:
    if media(request) not in JSON_TYPES:
        raise unsupported(media(request))
    req: ExistsRequest = await json_body(request, ExistsRequest)
    if len(req.ids) > state.settings.max_items:
        raise HTTPException(413, f"{len(req.ids)} ids in one request; at most {state.settings.max_items} "
                                 "(--max-items)")
    _, store = state.running()
    found = await anyio.to_thread.run_sync(store.existing, req.ids)
    return reply(ExistsResponse(present=[i for i in req.ids if i in found],
                                missing=[i for i in req.ids if i not in found]))


def router(access: Access) -> APIRouter:
    r = APIRouter(tags=["gallery"])
    missing = {404: {"description": "no such item"}, **ERROR_RESPONSES}
    r.add_api_route("/v1/gallery", gallery_add, methods=["POST"], response_model=GalleryAddResponse,
                    dependencies=access.write, responses=ERROR_RESPONSES,
                    summary="Add or replace gallery items (upsert by id)",
                    openapi_extra=request_body(("application/json", GalleryAddRequest),
                                               ("multipart/form-data", GalleryUpload)))
    r.add_api_route("/v1/gallery/exists", gallery_exists, methods=["POST"], response_model=ExistsResponse,
                    dependencies=access.read, responses=ERROR_RESPONSES,
                    summary="Which of these ids are in the gallery (at most --max-items per request)",
                    openapi_extra=request_body(("application/json", ExistsRequest)))
    r.add_api_route("/v1/gallery/{item_id}", gallery_get, methods=["GET"], response_model=GalleryItemOut,
                    dependencies=access.read, responses=missing, summary="Read a gallery item")
    r.add_api_route("/v1/gallery/{item_id}", gallery_delete, methods=["DELETE"], response_model=DeleteResponse,
                    dependencies=access.write, responses=missing, summary="Delete a gallery item")
    return r
