"""The FastAPI application of ``reidserve serve`` (:func:`create_app`).

=========================  =======  ===================================================================
endpoint                   auth     what it does
=========================  =======  ===================================================================
``POST /v1/embed``         all      images (base64 JSON or multipart) -> L2-normalised embeddings
``POST /v1/gallery``       write    upsert items by id (image, images or an embedding, plus metadata)
``POST /v1/gallery/exists`` all     which of these ids are in the gallery (a resumed bulk import skips them)
``GET /v1/gallery/{id}``   all      an item's metadata (and embedding with ``?include_embedding=true``)
``DELETE /v1/gallery/{id}`` write   remove an item
``POST /v1/search``        all      an image or embedding, ``k``, filters -> ids, scores, metadata
``GET /v1/stats``          all      model, batching, gallery and index facts; ``torch_loaded``
``GET /v1/limits``         all      what one request may carry (k, images, items, body size), images per model run
``GET /metrics``           all      Prometheus metrics
``GET /healthz``           -        the process answers
``GET /readyz``            -        the model runner and the gallery are up (503 otherwise)
=========================  =======  ===================================================================

"write" endpoints need a bearer token unless ``--auth none``; "all" ones only with ``--auth all``. Bad input is
answered with a 4xx and a ``detail`` message: 400 (malformed multipart body, more than one ``Authorization``
header), 401 (token), 404 (unknown id), 413 (body, image pixels), 415 (content type), 422 (validation: ids,
embeddings, images, limits). A client that goes away before its request was read is no error of the server: no
traceback, and the status 499 in the metrics.

The routes live in :mod:`.routers` (one ``APIRouter`` per resource), their dependencies -- the service's state,
token checks -- in :mod:`.dependencies`. The resources (model runner, gallery, batchers: a
:class:`~.state.ServiceState` in ``app.state.service``) are opened in the app's lifespan, or before it by
:meth:`ServiceState.open` so that a command line can report errors early.

Searches of concurrent requests are micro-batched into one index search (:mod:`.search_batcher`), except those
the store answers on the event loop at once (``try_search``: a small gallery, the index lock free). Well-formed JSON
embedding searches skip FastAPI's per-request machinery (:mod:`.fastpath`); everything else, errors included, is
answered by the routes.

Once started, the process moves its start-up objects (model, index wrappers, the app) out of the garbage
collector's reach (``gc.freeze``): full collections then take ~2 ms instead of ~100 ms that stalled every request
in flight.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute

from .dependencies import Access
from .embedder import EmbedError
from .fastpath import JsonFastPath
from .middleware import (
    CLIENT_CLOSED,
    BodyLimitMiddleware,
    MetricsMiddleware,
    RouteHeadersMiddleware,
    SingleAuthorizationMiddleware,
)
from .preprocess import ImageError
from .routers import embed, gallery, ops, search
from .schemas import EmbedRequest, EmbedUpload, GalleryAddRequest, GalleryUpload, SearchRequest, SearchUpload
from .settings import ServiceSettings
from .state import ServiceState
from .store import GalleryError, StoreError

__all__ = ["ServiceState", "create_app"]

log = logging.getLogger(__name__)
VERSION = ops.VERSION

# request-body models documented by content type (referenced from the operations' openapi_extra)
_DOC_MODELS: tuple[type[BaseModel], ...] = (EmbedRequest, EmbedUpload, GalleryAddRequest, GalleryUpload,
                                            SearchRequest, SearchUpload)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the service's resources before the first request; stop them after the last."""
    state: ServiceState = app.state.service
    await state.start()
    gc.collect()
    gc.freeze()  # see the module docstring
    try:
        yield
    finally:
        gc.unfreeze()
        await state.stop()


# -- exception handlers ---------------------------------------------------------------------------------------------
async def _gallery_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _image_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("gallery error: %s", exc)
    return JSONResponse({"detail": f"the gallery is unavailable: {exc}"}, status_code=503)


async def _embed_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("model error: %s", exc)
    return JSONResponse({"detail": f"the model failed: {exc}"}, status_code=500)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # the client closed the connection before its body was read: nobody will read this answer; its status is
    # for the metrics (and the access log)
    log.debug("%s %s: the client went away before its request was read", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED)


def create_app(settings: ServiceSettings | None = None, *, state: ServiceState | None = None) -> FastAPI:
    """The service app for ``settings`` (or an already opened ``state``)."""
    if state is None:
        if settings is None:
            raise TypeError("create_app needs ServiceSettings or a ServiceState")
        state = ServiceState(settings)
    app = FastAPI(title="reidserve", version=VERSION, lifespan=lifespan,
                  description="Person re-identification: embeddings, a durable gallery and top-k search.")
    app.state.service = state
    access = Access.for_mode(state.settings.auth)
    routers = [module.router(access) for module in (embed, gallery, search, ops)]
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(GalleryError, _gallery_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(EmbedError, _embed_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    _add_middleware(app, state, [route for router in routers for route in router.routes])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _add_middleware(app: FastAPI, state: ServiceState, routes: list[BaseRoute]) -> None:
    """Innermost: the JSON search fast path, the one-Authorization rule and the header fixes, then metrics
    (which count all of their answers), then the body limit."""
    search_route = next(r for r in routes if getattr(r, "path", None) == "/v1/search")
    max_body = state.settings.max_body_bytes
    app.add_middleware(JsonFastPath, path="/v1/search", model=SearchRequest,
                       handler=lambda req: search.fast_search(state, req),
                       authorized=lambda header: state.authorized(header, write=False), max_body=max_body,
                       route=lambda: search_route, counts=state.fast_search)
    app.add_middleware(SingleAuthorizationMiddleware)
    app.add_middleware(RouteHeadersMiddleware, routes=lambda: routes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the schemas of the request bodies read by hand (JSON and multipart)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # FastAPI's own document (it keeps it in app.openapi_schema)
        _, defs = models_json_schema([(m, "validation") for m in _DOC_MODELS],
                                     ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        app.openapi_schema = schema
    return app.openapi_schema
