"""Micro-batched search: ``SqliteFaissStore.search_batch`` and :class:`SearchBatcher` answer every request exactly
as a one-at-a-time search would (own k, own filter), and a failing request fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reidserve.service.search_batcher import SearchBatcher
from reidserve.service.sqlite_store import SqliteFaissStore
from reidserve.service.store import GalleryError, GalleryRecord, Hit, SearchFilter

DIM = 16


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fill(store: SqliteFaissStore, n: int) -> None:
    x = _unit(n, 0)
    store.upsert([GalleryRecord(f"p{i}", x[i], camera=f"c{i % 5}", time=float(i), metadata={"i": i})
                  for i in range(n)])
    assert store.wait_idle()


FILTERS: list[SearchFilter | None] = [
    None, SearchFilter(), SearchFilter(cameras=frozenset({"c1"})),
    SearchFilter(exclude_cameras=frozenset({"c0", "c2"})),
    SearchFilter(cameras=frozenset({"c4"}), time_min=100.0, time_max=300.0),
    SearchFilter(exclude_ids=frozenset({"p1", "p2", "p3"})), SearchFilter(cameras=frozenset({"nowhere"})),
]
KS = [1, 3, 10, 50, 7, 2000]


def _ids(rows: list[list[Hit]]) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 5)) for h in row] for row in rows]


@pytest.fixture(params=["flat", "ivf", "hnsw"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    opts: dict[str, Any] = {"ivf": {"index": "ivf", "ivf_threshold": 400, "nlist": 16, "nprobe": 4},
                            "hnsw": {"index": "hnsw", "hnsw_m": 16, "ef_search": 16}}.get(request.param,
                                                                                      {"index": "flat"})
    with SqliteFaissStore(tmp_path / "g", DIM, snapshot_interval=0, **opts) as s:
        _fill(s, 1200)
        assert s.stats()["index"]["kind"] == request.param
        yield s


def test_search_batch_equals_single_searches(store: SqliteFaissStore) -> None:
    q = _unit(28, 7)
    ks = [KS[i % len(KS)] for i in range(len(q))]
    flts = [FILTERS[(i * 3) % len(FILTERS)] for i in range(len(q))]
    batched = store.search_batch(q, ks, flts)
    single = [store.search(q[i], ks[i], flts[i])[0] for i in range(len(q))]
    assert _ids(batched) == _ids(single)
    for row, k, f in zip(batched, ks, flts, strict=True):
        if f is FILTERS[-1]:
            assert row == []
        elif (f is None or f.empty) and k <= 10:
            assert len(row) == k
    with pytest.raises(GalleryError, match="k must be"):
        store.search_batch(q[:2], [1, 0], [None, None])
    with pytest.raises(GalleryError, match="as many"):
        store.search_batch(q[:2], [1], [None, None])


def test_batcher_concurrent_requests_match_one_at_a_time(store: SqliteFaissStore) -> None:
    q = _unit(40, 11)
    ks = [KS[i % len(KS)] for i in range(len(q))]
    flts = [FILTERS[i % len(FILTERS)] for i in range(len(q))]

    async def main() -> tuple[list[list[Hit]], dict[str, Any]]:
        b = SearchBatcher(store, max_batch=16, max_wait_ms=20)
        await b.start()
        try:
            out = await asyncio.gather(*(b.search(q[i], ks[i], flts[i]) for i in range(len(q))))
            return list(out), b.stats()
        finally:
            await b.stop()

    got, stats = asyncio.run(main())
    assert _ids(got) == _ids([store.search(q[i], ks[i], flts[i])[0] for i in range(len(q))])
    assert stats["queries"] == len(q) and stats["batches"] < len(q) and stats["failures"] == 0


class _Picky:
    """A store without search_batch (the per-group path) that refuses k = 13."""

    dim = DIM

    def __init__(self, inner: SqliteFaissStore) -> None:
        self.inner = inner
        self.calls = 0

    def search(self, queries: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[list[Hit]]:
        self.calls += 1
        if k == 13:
            raise GalleryError("k=13 is unlucky")
        return self.inner.search(queries, k, flt)


class _PickyBatch(_Picky):
    """With search_batch, failing as a whole when any row asks for k = 13."""

    def search_batch(self, queries: np.ndarray, ks: list[int], flts: list[SearchFilter | None]) -> list[list[Hit]]:
        if 13 in ks:
            raise GalleryError("k=13 is unlucky")
        return self.inner.search_batch(queries, ks, flts)


@pytest.mark.parametrize("kind", [_Picky, _PickyBatch])
def test_a_failing_request_fails_alone(store: SqliteFaissStore, kind: type[_Picky]) -> None:
    q = _unit(12, 3)
    ks = [13 if i % 4 == 1 else 5 + i % 3 for i in range(len(q))]
    flts = [FILTERS[i % 3] for i in range(len(q))]
    picky = kind(store)

    async def main() -> list[Any]:
        b = SearchBatcher(picky, max_batch=64, max_wait_ms=50)  # type: ignore[arg-type]
        await b.start()
        try:
            return await asyncio.gather(*(b.search(q[i], ks[i], flts[i]) for i in range(len(q))),
                                        return_exceptions=True)
        finally:
            await b.stop()

    got = asyncio.run(main())
    for i, res in enumerate(got):
        if ks[i] == 13:
            assert isinstance(res, GalleryError) and "unlucky" in str(res)
        else:
            assert _ids([res]) == _ids(store.search(q[i], ks[i], flts[i]))


def test_batcher_refuses_when_stopped(store: SqliteFaissStore) -> None:
    from reidserve.service.store import StoreError

    async def main() -> None:
        b = SearchBatcher(store)
        with pytest.raises(StoreError, match="not running"):
            await b.search(_unit(1, 0)[0], 3)
        await b.start()
        assert len(await b.search(_unit(1, 0)[0], 3)) == 3
        await b.stop()
        assert not b.running

    asyncio.run(main())
