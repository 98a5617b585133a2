"""Micro-batching of concurrent gallery searches: many single-query requests, one index search.

:class:`SearchBatcher` works like the embedding batcher (:class:`~.embedder.Embedder`): each request puts its
normalised query, ``k`` and filter on an ``asyncio.Queue``; one collector task takes the first waiting request,
adds more until ``max_batch`` queries or ``max_wait_ms`` have passed, and runs them in one worker thread (the
event loop stays free) as a single ``[n, dim]`` search; requests arriving meanwhile form the next batch. A batch
amortises the thread hop and the index lock, and lets FAISS search its rows on several OpenMP threads at once
(``--faiss-threads``).

Requests keep their own ``k`` and filter: a store with ``search_batch`` (the SQLite + FAISS store) answers them in
one call, row by row exactly as one-at-a-time searches would; other stores get one ``search`` per distinct
(``k``, filter) group. When a batched call raises, its requests are searched again one by one, so that a failure
reaches only the requests it belongs to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .batching import MicroBatcher
from .store import GalleryStore, Hit, SearchFilter, StoreError

if TYPE_CHECKING:
    from .middleware import ServiceMetrics

__all__ = ["SearchBatcher"]


@dataclass
class _Query:
    q: np.ndarray
    k: int
    flt: SearchFilter | None
    future: asyncio.Future[list[Hit]]


class SearchBatcher(MicroBatcher[_Query]):
    """Micro-batching front of a :class:`~.store.GalleryStore`'s search (see the module docstring). Use from one
    event loop."""

    def __init__(self, store: GalleryStore, *, max_batch: int = 64, max_wait_ms: float = 1.0,
                 metrics: ServiceMetrics | None = None) -> None:
        super().__init__(max_batch, max_wait_ms, "search")
        self.store = store
        self.metrics = metrics
        self.batches = 0
        self.queries = 0
        self.failures = 0

    async def search(self, query: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        """The top-``k`` hits of one L2-normalised ``[dim]`` query passing ``flt``."""
        if self._queue is None or not self.running:
            raise StoreError("the search worker is not running")
        future: asyncio.Future[list[Hit]] = asyncio.get_running_loop().create_future()
        await self._put(_Query(query, int(k), flt, future))
        return await future

    # -- the worker thread ------------------------------------------------------------------------------------
    def _search_all(self, jobs: list[_Query]) -> list[list[Hit]]:
        q = np.stack([j.q for j in jobs]).astype(np.float32, copy=False)
        batch = getattr(self.store, "search_batch", None)
        if batch is not None:
            return batch(q, [j.k for j in jobs], [j.flt for j in jobs])
        groups: dict[tuple[int, SearchFilter | None], list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault((j.k, j.flt), []).append(i)
        out: list[list[Hit]] = [[] for _ in jobs]
        for (k, flt), rows in groups.items():
            for i, hits in zip(rows, self.store.search(q[rows], k, flt), strict=True):
                out[i] = hits
        return out

    def _run(self, jobs: list[_Query]) -> list[list[Hit] | BaseException]:
        try:
            return list(self._search_all(jobs))
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
        out: list[list[Hit] | BaseException] = []
        for j in jobs:  # the batch failed: find out whose query it was
            try:
                out.append(self.store.search(j.q[None], j.k, j.flt)[0])
            except Exception as exc:
                out.append(exc)
        return out

    # -- the collector task -----------------------------------------------------------------------------------
    async def _collect(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping:
            job = await self._queue.get()
            if job is None:
                break
            jobs, _, stopping = await self._gather(job)  # one query each: nothing is ever carried over
            jobs = [j for j in jobs if not j.future.done()]  # callers that went away
            if not jobs:
                continue
            t0 = time.perf_counter()
            try:
                results = await self._in_worker(self._run, jobs)
            except Exception as exc:  # the executor itself failed (shut down)
                results = [exc] * len(jobs)
            self.batches += 1
            self.queries += len(jobs)
            if self.metrics is not None:
                self.metrics.search_batch_size.observe(len(jobs))
                self.metrics.search_batch.observe(time.perf_counter() - t0)
            for j, res in zip(jobs, results, strict=True):
                if j.future.done():
                    continue
                if isinstance(res, BaseException):
                    self.failures += 1
                    j.future.set_exception(res)
                else:
                    j.future.set_result(res)

    def stats(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000.0, "batches": self.batches,
                "queries": self.queries,
                "mean_batch": round(self.queries / self.batches, 2) if self.batches else None,
                "failures": self.failures, "queued": self.queued}
