"""The resources of one running service (:class:`ServiceState`): model runner, micro-batchers, gallery, metrics
and token checker, opened before or in the app's lifespan and shared by every request (``app.state.service``)."""

from __future__ import annotations

import logging
import os
import time

import anyio
import numpy as np
from fastapi import HTTPException, Request

from .auth import ENV_TOKENS, AuthError, TokenChecker, resolve_tokens
from .backends import open_store
from .embedder import Embedder, LoadedModel, load_model
from .middleware import ServiceMetrics
from .preprocess import decode_image, to_batch
from .search_batcher import SearchBatcher
from .settings import ServiceSettings, check_data_dir
from .store import GalleryStore

__all__ = ["ServiceState"]

log = logging.getLogger(__name__)


class ServiceState:
    """The resources of one service: model runner, batchers (embedding, search), gallery store, metrics and token
    checker."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(settings.max_batch, settings.search_max_batch)
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
        ``SettingsError``, ``ModelLoadError``, ``StoreError``, ``TokenError``). The data folder's parent and the
        model are checked first, so a mistake in either creates nothing (no data folder, no token)."""
        s = self.settings
        check_data_dir(s.data_dir)
        if self.model is None:
            self.model = load_model(s.model, s.runtime, threads=s.threads, max_batch=s.max_batch,
                                    given=s.model_input())
        if self.checker is None and s.auth != "none":
            try:
                tokens, self.token_note = resolve_tokens(s.auth, s.token_file, s.data_dir,
                                                         env={ENV_TOKENS: ",".join(s.tokens)})
            except BaseException:
                self.model.runner.close()
                self.model = None
                raise
            if self.token_note:
                log.warning(self.token_note)
            self.checker = TokenChecker(tokens)
        if self.store is None:
            try:
                self.store = open_store(
                    s.store, s.data_dir, self.model.meta.output_dim, model_id=self.model.model_id,
                    accept_model_change=s.accept_model_change, index=s.index, ivf_threshold=s.ivf_threshold,
                    nlist=s.nlist, nprobe=s.nprobe, ivf_codec=s.ivf_codec,
                    hnsw_m=s.hnsw_m, ef_search=s.ef_search, snapshot_interval=s.snapshot_interval,
                    faiss_threads=s.faiss_threads or min(8, os.cpu_count() or 1), gpu=s.faiss_gpu,
                    milvus_token=s.milvus_token)
            except BaseException:
                self.model.runner.close()
                self.model = None
                raise

    async def start(self) -> None:
        """Open what :meth:`open` has not yet, then start the embedding and search micro-batchers."""
        from PIL import Image  # lazy: Pillow only for image queries

        Image.MAX_IMAGE_PIXELS = self.settings.max_pixels  # PIL's own bomb check, behind ours in decode_image
        await anyio.to_thread.run_sync(self.open)
        assert self.model is not None and self.store is not None
        self.embedder = Embedder(self.model, max_wait_ms=self.settings.max_wait_ms, metrics=self.metrics)
        await self.embedder.start()
        self.searcher = SearchBatcher(self.store, max_batch=self.settings.search_max_batch,
                                      max_wait_ms=self.settings.search_max_wait_ms, metrics=self.metrics)
        await self.searcher.start()
        self.metrics.watch_gallery(self.store.count)
        self.ready = True
        log.info("ready: %s on %s (%s), gallery %s with %d items, auth %s", self.model.path.name,
                 self.model.runtime, ", ".join(self.model.runner.providers), self.store.kind, self.store.count(),
                 self.settings.auth)

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

    # -- authentication ---------------------------------------------------------------------------------------
    def needs_token(self, write: bool) -> bool:
        """Whether an endpoint that reads (``write=False``) or writes needs a token under this auth mode."""
        mode = self.settings.auth
        return mode == "all" or (mode == "mutating" and write)

    def authorized(self, authorization: str | None, write: bool) -> bool:
        """Whether a request with this ``Authorization`` header value may go ahead (no side effects)."""
        if not self.needs_token(write):
            return True
        assert self.checker is not None
        try:
            self.checker.check(authorization)
        except AuthError:
            return False
        return True

    def authorize(self, request: Request, write: bool) -> None:
        """Raise a 401 ``HTTPException`` (and count the failure) unless ``request`` may go ahead."""
        if not self.needs_token(write):
            return
        assert self.checker is not None
        try:
            self.checker.check(request.headers.get("authorization"))
        except AuthError as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            challenge = 'Bearer realm="reidserve"' + (', error="invalid_token"' if exc.reason == "invalid" else "")
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": challenge}) from None

    # -- request helpers --------------------------------------------------------------------------------------
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
        images = [decode_image(b, size, mode, max_pixels=self.settings.max_pixels, what=n)
                  for b, n in zip(blobs, names, strict=True)]
        return to_batch(images, meta)

    async def embed_images(self, blobs: list[bytes], names: list[str]) -> np.ndarray:
        """Decode and embed image files (``names`` say which part of the request each came from)."""
        embedder, _ = self.running()
        if len(blobs) > self.settings.max_images:
            raise HTTPException(413, f"{len(blobs)} images in one request; this server takes at most "
                                     f"{self.settings.max_images} (--max-images): split the request")
        x = await anyio.to_thread.run_sync(self._decode_all, blobs, names)
        return await embedder.embed(x)
