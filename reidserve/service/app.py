"""The FastAPI application of ``reidserve serve``.

=========================  =======  ===================================================================
endpoint                   auth     what it does
=========================  =======  ===================================================================
``POST /v1/embed``         all      images (base64 JSON or multipart) -> L2-normalised embeddings
``POST /v1/gallery``       write    upsert items by id (image, images or an embedding, plus metadata)
``GET /v1/gallery/{id}``   all      an item's metadata (and embedding with ``?include_embedding=true``)
``DELETE /v1/gallery/{id}`` write   remove an item
``POST /v1/search``        all      an image or embedding, ``k``, filters -> ids, scores, metadata
``GET /v1/stats``          all      model, batching, gallery and index facts; ``torch_loaded``
``GET /metrics``           all      Prometheus metrics
``GET /healthz``           -        the process answers
``GET /readyz``            -        the model runner and the gallery are up (503 otherwise)
=========================  =======  ===================================================================

"write" endpoints need a bearer token unless ``--auth none``; "all" ones only with ``--auth all``. Bad input is
answered with a 4xx and a ``detail`` message: 401 (token), 404 (unknown id), 413 (body, image pixels), 415 (content
type), 422 (validation: ids, embeddings, images, limits). Resources (model runner, gallery, batcher) are opened in
the app's lifespan, or before it by :meth:`ServiceState.open` so that a command line can report errors early.

Searches of concurrent requests are micro-batched into one index search (:mod:`.search_batcher`), except those
the store answers on the event loop at once (``try_search``: a small gallery, the index lock free). Well-formed JSON
embedding searches skip FastAPI's per-request machinery (:mod:`.fastpath`); everything else, errors included, is
answered by the routes here.

Once started, the process moves its start-up objects (model, index wrappers, the app) out of the garbage
collector's reach (``gc.freeze``): full collections then take ~2 ms instead of ~100 ms that stalled every request
in flight.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from .auth import AuthError, TokenChecker, resolve_tokens
from .config import ServiceConfig
from .embedder import Embedder, EmbedError, LoadedModel, load_model
from .fastpath import JSON_TYPES, JsonFastPath, media_type
from .middleware import BodyLimitMiddleware, MetricsMiddleware, ServiceMetrics
from .preprocess import ImageError, decode_base64, decode_image, to_batch
from .schemas import (
    DeleteResponse,
    EmbedRequest,
    EmbedResponse,
    EmbedUpload,
    GalleryAddRequest,
    GalleryAddResponse,
    GalleryItemIn,
    GalleryItemOut,
    GalleryUpload,
    HealthResponse,
    HitOut,
    ReadyResponse,
    SearchFilterIn,
    SearchRequest,
    SearchResponse,
    SearchUpload,
    WriteOut,
)
from .search_batcher import SearchBatcher
from .store import (
    GalleryError,
    GalleryRecord,
    GalleryStore,
    SearchFilter,
    StoreError,
    normalize_embedding,
    open_store,
)

__all__ = ["ServiceState", "create_app"]

log = logging.getLogger("reidserve.service")
VERSION = "0.1.0"
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# module level: FastAPI resolves the (string) annotations of dependencies in this module's namespace
_BEARER = HTTPBearer(auto_error=False, description="an API token (see reidserve serve --auth)")


@dataclass
class _Item:
    """A gallery item as parsed from either content type: raw image bytes or an embedding."""

    id: str
    images: list[bytes]
    embedding: list[float] | None
    camera: str | None
    time: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


class ServiceState:
    """The resources of one service: model runner, batchers (embedding, search), gallery store, metrics and token
    checker."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = ServiceMetrics(config.max_batch, config.search_max_batch)
        self.model: LoadedModel | None = None
        self.store: GalleryStore | None = None
        self.embedder: Embedder | None = None
        self.searcher: SearchBatcher | None = None
        self.fast_search: dict[str, int] = {}  # JSON searches answered by / passed on from the fast path
        self.checker: TokenChecker | None = None
        self.token_note: str | None = None
        self.started = time.time()
        self.ready = False

    def open(self) -> None:
        """Load the model, resolve the tokens and open the gallery (idempotent; raises on configuration errors:
        ``ModelLoadError``, ``StoreError``, ``TokenError``)."""
        c = self.config
        if self.checker is None and c.auth != "none":
            tokens = list(c.tokens) if c.tokens else None
            if tokens is None:
                tokens, self.token_note = resolve_tokens(c.auth, c.token_file, c.data_dir)
                if self.token_note:
                    log.warning(self.token_note)
            self.checker = TokenChecker(tokens)
        if self.model is None:
            self.model = load_model(c.model, c.runtime, threads=c.threads, max_batch=c.max_batch)
        if self.store is None:
            try:
                self.store = open_store(
                    c.store, c.data_dir, self.model.meta.output_dim, model_id=self.model.model_id,
                    accept_model_change=c.accept_model_change, index=c.index, ivf_threshold=c.ivf_threshold,
                    nlist=c.nlist, nprobe=c.nprobe, ivf_codec=c.ivf_codec,
                    hnsw_m=c.hnsw_m, ef_search=c.ef_search, snapshot_interval=c.snapshot_interval,
                    faiss_threads=c.faiss_threads or min(8, os.cpu_count() or 1), gpu=c.faiss_gpu,
                    milvus_token=c.milvus_token)
            except BaseException:
                self.model.runner.close()
                self.model = None
                raise

    async def start(self) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self.config.max_pixels  # PIL's own bomb check, behind ours in decode_image
        await anyio.to_thread.run_sync(self.open)
        assert self.model is not None and self.store is not None
        self.embedder = Embedder(self.model, max_wait_ms=self.config.max_wait_ms, metrics=self.metrics)
        await self.embedder.start()
        self.searcher = SearchBatcher(self.store, max_batch=self.config.search_max_batch,
                                      max_wait_ms=self.config.search_max_wait_ms, metrics=self.metrics)
        await self.searcher.start()
        self.metrics.watch_gallery(self.store.count)
        self.ready = True
        log.info("ready: %s on %s (%s), gallery %s with %d items, auth %s", self.model.path.name,
                 self.model.runtime, ", ".join(self.model.runner.providers), self.store.kind, self.store.count(),
                 self.config.auth)

    async def stop(self) -> None:
        self.ready = False
        if self.searcher is not None:
            await self.searcher.stop()
            self.searcher = None
        if self.embedder is not None:
            await self.embedder.stop()
            self.embedder = None
            self.model = None
        elif self.model is not None:
            self.model.runner.close()
            self.model = None
        if self.store is not None:
            store, self.store = self.store, None
            await anyio.to_thread.run_sync(store.close)

    # -- request helpers --------------------------------------------------------------------------------------
    def authorized(self, authorization: str | None, write: bool) -> bool:
        """Whether a request with this ``Authorization`` header value may go ahead (no side effects)."""
        mode = self.config.auth
        if mode == "none" or (mode == "mutating" and not write):
            return True
        assert self.checker is not None
        try:
            self.checker.check(authorization)
        except AuthError:
            return False
        return True

    def authorize(self, request: Request, write: bool) -> None:
        mode = self.config.auth
        if mode == "none" or (mode == "mutating" and not write):
            return
        assert self.checker is not None
        try:
            self.checker.check(request.headers.get("authorization"))
        except AuthError as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            challenge = 'Bearer realm="reidserve"' + (', error="invalid_token"' if exc.reason == "invalid" else "")
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": challenge}) from None

    @property
    def dim(self) -> int:
        assert self.model is not None
        return int(self.model.meta.output_dim)

    def running(self) -> tuple[Embedder, GalleryStore]:
        if not self.ready or self.embedder is None or self.store is None:
            raise HTTPException(503, "the service is starting or stopping; retry shortly")
        return self.embedder, self.store

    def _decode_all(self, blobs: list[bytes], names: list[str]) -> np.ndarray:
        assert self.model is not None
        meta = self.model.meta
        mode = "L" if meta.input_shape[0] == 1 else "RGB"
        size = (int(meta.input_shape[1]), int(meta.input_shape[2]))
        images = [decode_image(b, size, mode, max_pixels=self.config.max_pixels, what=n)
                  for b, n in zip(blobs, names, strict=True)]
        return to_batch(images, meta)

    async def embed_images(self, blobs: list[bytes], names: list[str]) -> np.ndarray:
        embedder, _ = self.running()
        if len(blobs) > self.config.max_images:
            raise HTTPException(413, f"{len(blobs)} images in one request; this server takes at most "
                                     f"{self.config.max_images} (--max-images): split the request")
        x = await anyio.to_thread.run_sync(self._decode_all, blobs, names)
        return await embedder.embed(x)


def _media_type(request: Request) -> str:
    return media_type(request.headers.get("content-type"))


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ["body", *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)]


async def _json_body(request: Request, model: type[BaseModel]) -> Any:
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(_validation_errors(exc)) from None


async def _form(request: Request, max_files: int, max_part: int) -> FormData:
    return await request.form(max_files=max_files, max_fields=64, max_part_size=max_part)


async def _files(form: FormData, names: tuple[str, ...]) -> list[bytes]:
    out: list[bytes] = []
    for name in names:
        for value in form.getlist(name):
            if not isinstance(value, UploadFile):
                raise HTTPException(422, f"form field {name!r} must be a file upload (multipart file part with a "
                                         "filename), not text")
            out.append(await value.read())
    return out


def _form_text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPException(422, f"form field {name!r} must be text, not a file")
    return value


def _unsupported(media: str) -> HTTPException:
    return HTTPException(415, f"content type {media or '(none)'!r} is not accepted: send application/json (images "
                              "base64-encoded) or multipart/form-data (image files)")


def _b64_all(values: list[str], what: str) -> list[bytes]:
    return [decode_base64(v, f"{what}[{i}]") for i, v in enumerate(values)]


def _request_body(*models: tuple[str, type[BaseModel]]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        media: {"schema": {"$ref": f"#/components/schemas/{m.__name__}"}} for media, m in models}}}


_DOC_MODELS: tuple[type[BaseModel], ...] = (EmbedRequest, EmbedUpload, GalleryAddRequest, GalleryUpload,
                                            SearchRequest, SearchUpload)


def create_app(config: ServiceConfig | None = None, *, state: ServiceState | None = None) -> FastAPI:
    """The service app for ``config`` (or an already opened ``state``)."""
    if state is None:
        if config is None:
            raise ValueError("give a ServiceConfig or a ServiceState")
        state = ServiceState(config)
    cfg = state.config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        gc.collect()
        gc.freeze()  # see the module docstring
        try:
            yield
        finally:
            gc.unfreeze()
            await state.stop()

    app = FastAPI(title="reidserve", version=VERSION, lifespan=lifespan,
                  description="Person re-identification: embeddings, a durable gallery and top-k search.")
    app.state.service = state
    # innermost: the JSON search fast path, then metrics (which count its answers too), then the body limit
    app.add_middleware(JsonFastPath, path="/v1/search", model=SearchRequest, handler=lambda r: fast_search(r),
                       authorized=lambda header: state.authorized(header, write=False), max_body=cfg.max_body_bytes,
                       route=lambda: search_route, counts=state.fast_search)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)

    def auth_dependencies(write: bool) -> list[Any]:
        if not (cfg.auth == "all" or (cfg.auth == "mutating" and write)):
            return []  # open endpoint: no dependency to resolve per request

        def check(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
            state.authorize(request, write)
        return [Depends(check)]

    read_auth = auth_dependencies(False)
    write_auth = auth_dependencies(True)
    errors = {401: {"description": "missing or invalid token"}, 413: {"description": "request or image too large"},
              415: {"description": "unsupported content type"}, 422: {"description": "invalid input"}}

    @app.exception_handler(GalleryError)
    async def _gallery_error(request: Request, exc: GalleryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("gallery error: %s", exc)
        return JSONResponse({"detail": f"the gallery is unavailable: {exc}"}, status_code=503)

    @app.exception_handler(EmbedError)
    async def _embed_error(request: Request, exc: EmbedError) -> JSONResponse:
        log.error("model error: %s", exc)
        return JSONResponse({"detail": f"the model failed: {exc}"}, status_code=500)

    def reply(model: BaseModel, status: int = 200) -> Response:
        return Response(model.model_dump_json(), status_code=status, media_type="application/json")

    # -- embeddings ---------------------------------------------------------------------------------------------
    @app.post("/v1/embed", response_model=EmbedResponse, dependencies=read_auth, tags=["embed"], responses=errors,
              openapi_extra=_request_body(("application/json", EmbedRequest), ("multipart/form-data", EmbedUpload)),
              summary="Embed one or many images")
    async def embed(request: Request) -> Response:
        media = _media_type(request)
        if media in JSON_TYPES:
            req: EmbedRequest = await _json_body(request, EmbedRequest)
            if len(req.images) > cfg.max_images:
                raise HTTPException(413, f"{len(req.images)} images in one request; at most {cfg.max_images}")
            blobs = _b64_all(req.images, "images")
        elif media == "multipart/form-data":
            form = await _form(request, cfg.max_images, cfg.max_body_bytes)
            blobs = await _files(form, ("images", "image"))
            if not blobs:
                raise HTTPException(422, "no image files: send them as multipart file parts named 'images'")
        else:
            raise _unsupported(media)
        emb = await state.embed_images(blobs, [f"images[{i}]" for i in range(len(blobs))])
        return reply(EmbedResponse(embeddings=emb.tolist(), dim=int(emb.shape[1]), count=len(emb)))

    # -- gallery ------------------------------------------------------------------------------------------------
    async def parse_items(request: Request) -> list[_Item]:
        media = _media_type(request)
        if media in JSON_TYPES:
            req: GalleryAddRequest = await _json_body(request, GalleryAddRequest)
            if len(req.items) > cfg.max_items:
                raise HTTPException(413, f"{len(req.items)} items in one request; at most {cfg.max_items} "
                                         "(--max-items)")
            out = []
            for i, it in enumerate(req.items):
                it: GalleryItemIn  # type: ignore[no-redef]
                b64 = [it.image] if it.image is not None else (it.images or [])
                out.append(_Item(it.id, _b64_all(b64, f"items[{i}].images"), it.embedding, it.camera, it.time,
                                 it.metadata))
            return out
        if media == "multipart/form-data":
            form = await _form(request, cfg.max_images, cfg.max_body_bytes)
            fields: dict[str, Any] = {"id": _form_text(form, "id"), "camera": _form_text(form, "camera"),
                                      "time": _form_text(form, "time")}
            meta_text = _form_text(form, "metadata")
            blobs = await _files(form, ("images", "image"))
            if not blobs:
                raise HTTPException(422, "no image files: send them as multipart file parts named 'images' (or "
                                         "post JSON with an embedding)")
            try:
                meta = _json_object(meta_text, "metadata")
                parsed = GalleryItemIn.model_validate({  # validated like JSON items; the embedding is a stand-in
                    **{k: v for k, v in fields.items() if v is not None}, "embedding": [1.0],
                    **({"metadata": meta} if meta is not None else {})})
            except ValidationError as exc:
                raise RequestValidationError(_validation_errors(exc)) from None
            return [_Item(parsed.id, blobs, None, parsed.camera, parsed.time, parsed.metadata)]
        raise _unsupported(media)

    @app.post("/v1/gallery", response_model=GalleryAddResponse, dependencies=write_auth, tags=["gallery"],
              responses=errors, summary="Add or replace gallery items (upsert by id)",
              openapi_extra=_request_body(("application/json", GalleryAddRequest),
                                          ("multipart/form-data", GalleryUpload)))
    async def gallery_add(request: Request) -> Response:
        items = await parse_items(request)
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

    item_path = Path(pattern=ID_PATTERN, description="the item id")

    @app.get("/v1/gallery/{item_id}", response_model=GalleryItemOut, dependencies=read_auth, tags=["gallery"],
             responses={404: {"description": "no such item"}, **errors}, summary="Read a gallery item")
    async def gallery_get(item_id: str = item_path, include_embedding: bool = Query(False)) -> Response:
        _, store = state.running()
        item = await anyio.to_thread.run_sync(store.get, item_id, include_embedding)
        if item is None:
            raise HTTPException(404, f"no gallery item with id {item_id!r}")
        return reply(GalleryItemOut(id=item.id, camera=item.camera, time=item.time, metadata=item.metadata,
                                    seq=item.seq,
                                    embedding=item.embedding.tolist() if item.embedding is not None else None))

    @app.delete("/v1/gallery/{item_id}", response_model=DeleteResponse, dependencies=write_auth, tags=["gallery"],
                responses={404: {"description": "no such item"}, **errors}, summary="Delete a gallery item")
    async def gallery_delete(item_id: str = item_path) -> Response:
        _, store = state.running()
        res = await anyio.to_thread.run_sync(store.delete, item_id)
        if res is None:
            raise HTTPException(404, f"no gallery item with id {item_id!r}")
        state.metrics.writes.labels("delete").inc()
        return reply(DeleteResponse(id=res.id, deleted=True, seq=res.seq, gallery_size=store.count()))

    # -- search -------------------------------------------------------------------------------------------------
    @app.post("/v1/search", response_model=SearchResponse, dependencies=read_auth, tags=["search"], responses=errors,
              openapi_extra=_request_body(("application/json", SearchRequest), ("multipart/form-data", SearchUpload)),
              summary="Top-k gallery items for an image or an embedding")
    async def search(request: Request) -> Response:
        t0 = time.perf_counter()
        media = _media_type(request)
        image: bytes | None = None
        embedding: list[float] | None = None
        if media in JSON_TYPES:
            req: SearchRequest = await _json_body(request, SearchRequest)
            k, flt_in = req.k, req.filter
            if req.image is not None:
                image = decode_base64(req.image, "image")
            embedding = req.embedding
        elif media == "multipart/form-data":
            form = await _form(request, 1, cfg.max_body_bytes)
            blobs = await _files(form, ("image", "images"))
            if len(blobs) != 1:
                raise HTTPException(422, "send exactly one query image as a multipart file part named 'image'")
            image = blobs[0]
            try:
                k_text = _form_text(form, "k")
                up = SearchRequest.model_validate({"embedding": [1.0], "k": int(k_text) if k_text else 10,
                                                   "filter": _json_object(_form_text(form, "filter"), "filter")})
            except ValueError as exc:
                if isinstance(exc, ValidationError):
                    raise RequestValidationError(_validation_errors(exc)) from None
                raise HTTPException(422, f"form field 'k' must be an integer ({exc})") from None
            k, flt_in = up.k, up.filter
        else:
            raise _unsupported(media)
        return reply(await answer_search(t0, k, flt_in, image=image, embedding=embedding))

    async def answer_search(t0: float, k: int, flt_in: SearchFilterIn | None, *, image: bytes | None = None,
                            embedding: list[float] | None = None) -> SearchResponse:
        if k > cfg.max_k:
            raise HTTPException(422, f"k={k} is above this server's limit of {cfg.max_k} (--max-k)")
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

    async def fast_search(req: SearchRequest) -> bytes | None:
        """The JSON embedding query of :class:`~.fastpath.JsonFastPath`; image queries take the route."""
        if req.embedding is None:
            return None
        res = await answer_search(time.perf_counter(), req.k, req.filter, embedding=req.embedding)
        return res.model_dump_json().encode()

    search_route = next(r for r in app.routes if getattr(r, "path", None) == "/v1/search")

    # -- operations ---------------------------------------------------------------------------------------------
    @app.get("/v1/stats", dependencies=read_auth, tags=["ops"], summary="Model, batching and gallery facts")
    async def stats() -> dict[str, Any]:
        embedder, store = state.running()
        assert state.model is not None
        gallery = await anyio.to_thread.run_sync(store.stats)
        return {"version": VERSION, "pid": os.getpid(), "uptime_s": round(time.time() - state.started, 1),
                "torch_loaded": "torch" in sys.modules, "auth": cfg.auth, "model": state.model.describe(),
                "batching": embedder.stats(),
                "search_batching": state.searcher.stats() if state.searcher is not None else None,
                "search_fast_path": dict(state.fast_search),
                "gc": {"frozen_objects": gc.get_freeze_count(),
                       "collections": [g["collections"] for g in gc.get_stats()]},
                "gallery": gallery, "limits": cfg.limits()}

    @app.get("/metrics", dependencies=read_auth, tags=["ops"], summary="Prometheus metrics",
             response_class=Response)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=HealthResponse, tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyResponse, tags=["ops"], summary="Readiness",
             responses={503: {"model": ReadyResponse, "description": "not ready"}})
    async def readyz() -> JSONResponse:
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

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from pydantic.json_schema import models_json_schema

            schema = default_openapi()
            _, defs = models_json_schema([(m, "validation") for m in _DOC_MODELS],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _json_object(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None or not text.strip():
        return None
    import json

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise HTTPException(422, f"form field {what!r} must be a JSON object") from None
    if not isinstance(value, dict):
        raise HTTPException(422, f"form field {what!r} must be a JSON object")
    return value


def _to_filter(flt: SearchFilterIn | None) -> SearchFilter | None:
    if flt is None:
        return None
    return SearchFilter(cameras=frozenset(flt.cameras) if flt.cameras is not None else None,
                        exclude_cameras=frozenset(flt.exclude_cameras), time_min=flt.time_min,
                        time_max=flt.time_max, exclude_ids=frozenset(flt.exclude_ids))
