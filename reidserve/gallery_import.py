"""Bulk upload of gallery items to a running ``reidserve serve`` (:func:`import_items`, behind ``reidserve query
import`` and ``reidserve demo-gallery``).

The items (:class:`~reidserve.import_sources.ImportItem`, e.g. from :func:`reidserve.import_sources.list_items`)
go in micro-batches: one request carries ``batch`` items (by default the server's images per model run, within
its images-per-request, items-per-request and body-size limits, which the server tells: ``GET /v1/limits``), and
``workers`` requests are in flight at once, so the server decodes one batch while its model embeds another and the
gallery commits a third. A batch too large for the body limit is split in two until it fits.

Resuming: the ids already in the gallery are asked for first (``POST /v1/gallery/exists``) and not sent again, so
an interrupted import, run again, sends only what is missing (``skip_existing=False`` replaces them instead). Each
request is one transaction: what the server acknowledged stays. A request the server refuses stops the import
with an error naming the file (the server's message says which of its items was at fault); what was
acknowledged before stays, and the same command resumes once the file is fixed or removed.

Only the client is used (httpx, numpy; no torch).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from .client import ReidClient, ReidClientError
from .errors import ReidserveError
from .import_sources import ImportItem

__all__ = ["GalleryImportError", "ImportReport", "import_items"]

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4
_ITEM_REF = re.compile(r"items\[(\d+)\]")


class GalleryImportError(ReidserveError):
    """The import stopped: the server refused an item or a request; the message names the file and says how to
    resume."""


@dataclass(frozen=True)
class ImportReport:
    """What an import did: ``sent`` items added or replaced in ``seconds`` (the upload itself), ``skipped`` already
    in the gallery, and the gallery's size after the last request (None when nothing was sent)."""

    total: int
    skipped: int
    sent: int
    seconds: float
    batch: int
    workers: int
    gallery_size: int | None

    @property
    def items_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        rate = f" in {self.seconds:.1f} s ({self.items_per_s:.1f} items/s)" if self.sent else ""
        skipped = f"; {self.skipped} already in the gallery were skipped" if self.skipped else ""
        size = f"; gallery size {self.gallery_size}" if self.gallery_size is not None else ""
        return f"imported {self.sent} of {self.total} items{rate}{skipped}{size}"


def _batch_size(client: ReidClient, batch: int) -> int:
    lim = client.limits()
    if lim is None:
        return batch or 32
    size = batch or lim.max_batch
    return max(1, min(size, lim.max_images, lim.max_items))


def _chunks(items: Sequence[ImportItem], size: int) -> Iterator[list[ImportItem]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class _Sender:
    """Sends batches from worker threads, each thread with its own client (one connection each)."""

    def __init__(self, client: ReidClient) -> None:
        self.client = client
        self.local = threading.local()
        self.opened: list[ReidClient] = []
        self.lock = threading.Lock()

    def _mine(self) -> ReidClient:
        c: ReidClient | None = getattr(self.local, "client", None)
        if c is None:
            c = self.local.client = self.client.clone()
            with self.lock:
                self.opened.append(c)
        return c

    def send(self, batch: list[ImportItem]) -> tuple[int, int | None]:
        """Upsert ``batch`` (split while its body is above the server's limit); (items written, gallery size)."""
        c = self._mine()
        body = json.dumps({"items": [c.item(it.id, image=it.image, camera=it.camera, time=it.time,
                                            metadata=dict(it.metadata) or None) for it in batch]},
                          separators=(",", ":")).encode()
        lim = c.limits()
        if lim is not None and len(body) > lim.max_body_bytes:
            if len(batch) == 1:
                raise GalleryImportError(f"{batch[0].label}: the image is too large for the server's request limit "
                                         f"of {lim.max_body_bytes} bytes (its --max-body-mb)")
            half = len(batch) // 2
            n1, _ = self.send(batch[:half])
            n2, size = self.send(batch[half:])
            return n1 + n2, size
        try:
            res = c.post_json("/v1/gallery", body).json()
        except ReidClientError as exc:
            raise _blame(exc, batch) from None
        return len(res["items"]), int(res["gallery_size"])

    def close(self) -> None:
        for c in self.opened:
            c.close()


def _blame(exc: ReidClientError, batch: list[ImportItem]) -> GalleryImportError:
    """The server's refusal, naming the file of the item it blames (``items[i]`` in its message)."""
    text = str(exc)
    m = _ITEM_REF.search(text)
    if m and int(m.group(1)) < len(batch):
        return GalleryImportError(f"{batch[int(m.group(1))].label}: {text}")
    return GalleryImportError(f"a batch from {batch[0].label} to {batch[-1].label} was refused: {text}")


def _check_ids(items: Sequence[ImportItem]) -> None:
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise GalleryImportError(f"{seen[it.id]} and {it.label or it.id} would both be item {it.id!r}")
        seen[it.id] = it.label or it.id


def import_items(client: ReidClient, items: Sequence[ImportItem], *, batch: int = 0,
                 workers: int = DEFAULT_WORKERS, skip_existing: bool = True,
                 on_start: Callable[[int, int], None] | None = None,
                 on_progress: Callable[[int], None] | None = None) -> ImportReport:
    """Upload ``items`` to ``client``'s server (see the module docstring). ``batch`` 0: the server's images per
    model run. ``on_start(to_send, skipped)`` is called once the ids already present are known, ``on_progress(n)``
    after each acknowledged request. Raises :class:`GalleryImportError` (or the client's error when the server
    cannot be reached) and stops at the first refusal."""
    _check_ids(items)
    size = _batch_size(client, batch)
    present = client.existing([it.id for it in items]) if skip_existing and items else set()
    todo = [it for it in items if it.id not in present]
    if on_start is not None:
        on_start(len(todo), len(present))
    sender = _Sender(client)
    sent, gallery_size = 0, None
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="reidserve-import")
    pending: set[Future[tuple[int, int | None]]] = set()
    done: set[Future[tuple[int, int | None]]] = set()
    counted: set[Future[tuple[int, int | None]]] = set()

    def count(future: Future[tuple[int, int | None]]) -> None:
        nonlocal sent, gallery_size
        n, reported = future.result()
        counted.add(future)
        sent += n
        gallery_size = reported if reported is not None else gallery_size
        if on_progress is not None:
            on_progress(n)

    chunks = _chunks(todo, size)
    try:
        while True:
            while len(pending) < max(1, workers):  # at most `workers` requests in flight
                chunk = next(chunks, None)
                if chunk is None:
                    break
                pending.add(pool.submit(sender.send, chunk))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: f.exception() is not None):  # successes first
                count(future)
    except BaseException as exc:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        sender.close()
        for future in pending | done:  # what was acknowledged meanwhile
            if future not in counted and future.done() and not future.cancelled() and future.exception() is None:
                count(future)
        if isinstance(exc, GalleryImportError):
            raise GalleryImportError(f"{exc}; {sent} items were stored before it: fix or remove the file and run "
                                     "the same command again to send the rest") from None
        raise
    pool.shutdown(wait=True)
    sender.close()
    seconds = time.perf_counter() - t0
    return ImportReport(len(items), len(present), sent, seconds, size, max(1, workers), gallery_size)
