"""Top-k search with per-query filters over one FAISS index (:func:`filtered_top_k`).

The index knows vectors and int64 ids only; which item an id is (its string id, camera, time) lives in the
store's in-memory map. A filter is applied to the ranked ids the index returns: when fewer than ``k`` of them pass,
the query is searched again, 4x wider, until ``k`` pass or everything was looked at. Queries without a filter fetch
exactly ``k``. One FAISS call serves every query of a round (a micro-batch of requests): flat and IVF indexes fetch
the most any row needs (a longer fetch leaves the first ``k`` passing hits of a row unchanged), HNSW graphs one
call per fetch size (a graph search depends on ``k``: efSearch >= k).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pruneopt.common.threads import faiss_threads

from .faiss_index import VectorIndex
from .sqlite_db import Entry
from .store import SearchFilter

__all__ = ["filtered_top_k"]


def filtered_top_k(index: VectorIndex, entries: Mapping[int, Entry], q: np.ndarray, ks: Sequence[int],
                   flts: Sequence[SearchFilter | None], threads: int = 1) -> list[list[tuple[float, Entry]]]:
    """``(score, entry)`` of the top-``ks[i]`` items of query row ``i`` passing ``flts[i]`` (see the module
    docstring); FAISS runs on ``threads`` OpenMP threads. Call with the index's lock held."""
    flts = [None if f is None or f.empty else f for f in flts]
    found: list[list[tuple[float, Entry]]] = [[] for _ in range(len(q))]
    ntotal = index.ntotal
    want = [min(ntotal, k if f is None else max(4 * k, k + 64)) for k, f in zip(ks, flts, strict=True)]
    todo = [i for i in range(len(q)) if want[i] > 0]
    while todo:
        rest: list[int] = []
        if index.kind == "hnsw":
            fetch = min(want[i] for i in todo)
            rest = [i for i in todo if want[i] != fetch]
            todo = [i for i in todo if want[i] == fetch]
        else:
            fetch = max(want[i] for i in todo)
        rows = q if len(todo) == len(q) else np.ascontiguousarray(q[todo])
        with faiss_threads(threads):
            scores, ids = index.search(rows, fetch)
        again = []
        for r, qi in enumerate(todo):
            k, flt = ks[qi], flts[qi]
            hits: list[tuple[float, Entry]] = []
            for score, fid in zip(scores[r].tolist(), ids[r].tolist(), strict=True):
                if fid < 0:
                    break
                e = entries.get(fid)
                if e is None or (flt is not None and not flt.matches(e.id, e.camera, e.time)):
                    continue
                hits.append((score, e))
                if len(hits) == k:
                    break
            found[qi] = hits
            if len(hits) < k and fetch < ntotal and ids[r][-1] >= 0:
                want[qi] = min(ntotal, fetch * 4)
                again.append(qi)
        todo = again + rest
    return found
