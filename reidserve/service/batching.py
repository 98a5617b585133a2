"""The micro-batching machinery shared by the embedding and search batchers.

A :class:`MicroBatcher` owns an ``asyncio.Queue`` of jobs, one collector task and one worker thread. Callers put
jobs on the queue; the collector (a subclass's ``_collect``) calls :meth:`MicroBatcher._gather` to take the first
waiting job and add more until ``max_batch`` units (images, queries) or ``max_wait`` seconds have passed, then runs
the batch in the worker thread so the event loop stays free. ``None`` on the queue means "stop after this batch".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

J = TypeVar("J")


class MicroBatcher(Generic[J]):
    """Queue, collector task and worker thread of a micro-batcher; subclasses implement ``_collect``."""

    def __init__(self, max_batch: int, max_wait_ms: float, name: str) -> None:
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self._name = name
        self._queue: asyncio.Queue[J | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"reidserve-{name}")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect(), name=f"reidserve-{self._name}-batcher")

    async def stop(self) -> None:
        """Answer what is queued, then stop the collector and the worker thread."""
        if self._task is not None and self._queue is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def _put(self, job: J) -> None:
        assert self._queue is not None
        await self._queue.put(job)

    async def _collect(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _gather(self, first: J, size: Callable[[J], int] = lambda j: 1) -> tuple[list[J], J | None, bool]:
        """``first`` plus whatever arrives within ``max_wait``, up to ``max_batch`` units of ``size``.

        Returns ``(jobs, carry, stopping)``: ``carry`` is a job that did not fit (it starts the next batch) and
        ``stopping`` is true when the stop marker was taken off the queue.
        """
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        jobs, n = [first], size(first)
        deadline = loop.time() + self.max_wait
        while n < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if nxt is None:
                return jobs, None, True
            if n + size(nxt) > self.max_batch:
                return jobs, nxt, False
            jobs.append(nxt)
            n += size(nxt)
        return jobs, None, False

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
