"""Re-ID figures measured through a running ``reidserve serve`` (:func:`evaluate_service`, behind ``reidserve query
eval``): every query image is searched in the service's gallery and the rankings are scored under the Market-1501
protocol by :func:`reidserve.metrics.evaluate` -- the scoring ``reidserve eval`` uses -- so the two sets of figures
can be compared: the service's preprocessing, model runtime and index against the evaluation's torch model.

Queries are the images of a Market-1501 layout's ``query/`` (or of any folder of Market-style names), minus junk
(person id ``-1``) and distractors (``0``), as the dataset readers do. Gallery items tell their identity and camera
through the ``pid`` metadata and the camera that ``reidserve query import`` gives them from their file names; an
item without a ``pid`` counts as nobody's match. Gallery items with the query's person id *and* camera are left
out of its ranking, junk items out of every ranking (the protocol).

Each query asks for ``k`` results, by default the whole gallery (up to the server's ``--max-k``): mAP needs the
rank of every true match. With a gallery larger than that, matches below rank ``k`` count as ranked last, so mAP
and mINP are then lower bounds (the report says so); CMC up to rank ``k`` is exact. Client side only: no torch.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .client import ReidClient
from .errors import ReidserveError
from .import_sources import IMAGE_SUFFIXES, image_folder, is_layout, parse_name
from .metrics import ReidMetrics, evaluate

__all__ = ["QueryImage", "RemoteEvalError", "ServiceEval", "evaluate_service", "query_images", "score"]

DEFAULT_MAX_K = 1000
_NOBODY = -2  # the pid of a gallery item without one: matches no query, and is not junk (-1)


class RemoteEvalError(ReidserveError):
    """Queries or a gallery that cannot be evaluated; the message says why."""


@dataclass(frozen=True)
class QueryImage:
    """A query: its file, person id and camera (``c1``...)."""

    path: Path
    pid: int
    camera: str


@dataclass(frozen=True)
class ServiceEval:
    """The figures (:class:`~reidserve.metrics.ReidMetrics`), the ``k`` each query asked for, the gallery's size,
    whether the rankings were cut short (``k`` < gallery size: mAP and mINP are lower bounds) and the time taken."""

    metrics: ReidMetrics
    k: int
    gallery_size: int
    truncated: bool
    seconds: float

    def summary(self) -> str:
        cut = (f"; only the top {self.k} of {self.gallery_size} gallery items were ranked (the server's --max-k): "
               "mAP and mINP are lower bounds") if self.truncated else ""
        return f"{self.metrics}  [through the service, gallery {self.gallery_size}, {self.seconds:.1f} s{cut}]"


def query_images(root: str | os.PathLike[str], split: str | None = None) -> list[QueryImage]:
    """The query images of ``root`` (a Market-1501 layout: its ``query/``, or ``split``; else ``root`` itself)."""
    base = Path(root)
    folder = image_folder(base, split or "query") if is_layout(base) else image_folder(base, split)
    out, unnamed = [], []
    for name in sorted(os.listdir(folder)):
        p = folder / name
        if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES) or not p.is_file():
            continue
        parsed = parse_name(p.stem)
        if parsed is None:
            unnamed.append(name)
        elif parsed[0] > 0:  # junk (-1) and distractors (0) are no queries
            out.append(QueryImage(p, parsed[0], parsed[1]))
    if unnamed:
        raise RemoteEvalError(f"{folder}/{unnamed[0]} (and {len(unnamed) - 1} more) does not tell its person and "
                              "camera: query images need Market-1501 names (0002_c1s1_000451_03.jpg)")
    if not out:
        raise RemoteEvalError(f"{folder} holds no query images with a person id (Market-1501 names, pid > 0)")
    return out


def _gallery_size(client: ReidClient) -> int:
    stats = client.stats()
    try:
        return int(stats["gallery"]["items"])
    except (KeyError, TypeError, ValueError):
        raise RemoteEvalError("the server's /v1/stats does not give its gallery size") from None


def _search_all(client: ReidClient, queries: Sequence[QueryImage], k: int, workers: int,
                on_progress: Callable[[int], None] | None) -> list[list[dict[str, Any]]]:
    local = threading.local()
    opened: list[ReidClient] = []
    lock = threading.Lock()

    def one(q: QueryImage) -> list[dict[str, Any]]:
        c: ReidClient | None = getattr(local, "client", None)
        if c is None:
            c = local.client = client.clone()
            with lock:
                opened.append(c)
        return c.search(image=q.path, k=k)

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="reidserve-eval") as pool:
            results = []
            for hits in pool.map(one, queries):
                results.append(hits)
                if on_progress is not None:
                    on_progress(1)
    finally:
        for c in opened:
            c.close()
    return results


def score(queries: Sequence[QueryImage], rankings: Sequence[Sequence[dict[str, Any]]]) -> ReidMetrics:
    """Market-1501-protocol figures of the service's rankings (``hits`` of each query, best first)."""
    gallery: dict[str, tuple[int, str | None]] = {}
    for hits in rankings:
        for h in hits:
            pid = h.get("metadata", {}).get("pid")
            gallery[h["id"]] = (int(pid) if isinstance(pid, int) and not isinstance(pid, bool) else _NOBODY,
                                h.get("camera"))
    if not gallery:
        raise RemoteEvalError("the searches returned nothing: the gallery is empty (fill it with `reidserve query "
                              "import DATASET`)")
    ids = sorted(gallery)  # the order of the file names, as the dataset readers list them (ties break by it)
    column = {item: j for j, item in enumerate(ids)}
    cameras = {cam: i for i, cam in enumerate(sorted({q.camera for q in queries}
                                                     | {c for _, c in gallery.values() if c is not None}))}
    dist = np.full((len(queries), len(ids)), np.inf)
    for row, hits in enumerate(rankings):
        for h in hits:
            dist[row, column[h["id"]]] = -float(h["score"])  # inner products of unit vectors: larger is closer
    g_pids = [gallery[i][0] for i in ids]
    g_cams = [cameras[c] if (c := gallery[i][1]) is not None else -1 for i in ids]
    return evaluate(dist, [q.pid for q in queries], g_pids, [cameras[q.camera] for q in queries], g_cams)


def evaluate_service(client: ReidClient, queries: Sequence[QueryImage], *, k: int = 0, workers: int = 4,
                     on_progress: Callable[[int], None] | None = None) -> ServiceEval:
    """Search every query through ``client``'s server and score the rankings (see the module docstring)."""
    size = _gallery_size(client)
    if size == 0:
        raise RemoteEvalError("the server's gallery is empty: fill it with `reidserve query import DATASET` first")
    lim = client.limits()
    max_k = lim.max_k if lim is not None else DEFAULT_MAX_K
    k = min(k or size, size, max_k)
    t0 = time.perf_counter()
    rankings = _search_all(client, queries, k, workers, on_progress)
    metrics = score(queries, rankings)
    return ServiceEval(metrics, k, size, k < size, time.perf_counter() - t0)
