"""The gallery store suite, run on SQLite + FAISS and on Milvus (Milvus Lite), plus SQLite/FAISS specifics:
snapshots, replay after a crash, IVF training, locking."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reidserve.service.backends import open_store
from reidserve.service.faiss_index import SnapshotError, read_snapshot_file, write_snapshot_file
from reidserve.service.sqlite_store import SNAPSHOT_FILE, SqliteFaissStore
from reidserve.service.store import (
    GalleryError,
    GalleryRecord,
    GalleryStore,
    SearchFilter,
    StoreError,
    normalize_embedding,
)

DIM = 16
REPO = Path(__file__).resolve().parents[2]


def vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(n: int, seed: int = 0, prefix: str = "p", cams: int = 3) -> list[GalleryRecord]:
    x = vectors(n, seed)
    return [GalleryRecord(f"{prefix}{i}", x[i], camera=f"c{i % cams}", time=float(i), metadata={"i": i})
            for i in range(n)]


def _milvus_reason() -> str | None:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as exc:
        return f"milvus-lite / pymilvus are not installed ({exc}); pip install 'pruneopt[milvus]'"
    return None


_counter = itertools.count()


@pytest.fixture(scope="module")
def milvus_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _milvus_reason()
    if reason:
        pytest.skip(reason)
    path = tmp_path_factory.mktemp("milvus") / "gallery.db"
    from reidserve.service.milvus_store import MilvusStore

    try:
        MilvusStore(str(path), DIM, collection="probe").close()
    except StoreError as exc:  # e.g. a platform milvus-lite has no binary for
        pytest.skip(f"Milvus Lite cannot run here: {exc}")
    return path


StoreFactory = Callable[..., GalleryStore]


@pytest.fixture(params=["sqlite", "sqlite-hnsw", "milvus"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``make_store(dim=DIM, model_id="m", name="g", **options)``: open (or reopen) a store of this backend."""
    opened: list[GalleryStore] = []
    kind = request.param
    db = request.getfixturevalue("milvus_db") if kind == "milvus" else None
    collection = f"t{next(_counter)}"

    def factory(dim: int = DIM, model_id: str = "m", name: str = "g", **options: Any) -> GalleryStore:
        if kind.startswith("sqlite"):
            if kind == "sqlite-hnsw":
                options.setdefault("index", "hnsw")
            store: GalleryStore = SqliteFaissStore(tmp_path / name, dim, model_id=model_id, **options)
        else:
            from reidserve.service.milvus_store import MilvusStore

            store = MilvusStore(str(db), dim, collection=f"{collection}_{name}", model_id=model_id,
                                accept_model_change=options.get("accept_model_change", False))
        opened.append(store)
        return store

    yield factory
    for s in opened:
        s.close()


# -- the shared suite -----------------------------------------------------------------------------------------------
def test_upsert_get_replace_delete(make_store: StoreFactory) -> None:
    store = make_store()
    recs = records(20)
    res = store.upsert(recs)
    assert [r.id for r in res] == [r.id for r in recs] and all(r.created for r in res)
    assert store.count() == 20
    got = store.get("p3", with_embedding=True)
    assert got is not None and got.camera == "c0" and got.time == 3.0 and got.metadata == {"i": 3}
    np.testing.assert_allclose(got.embedding, recs[3].embedding, atol=1e-6)
    assert store.get("p3").embedding is None
    new = GalleryRecord("p3", vectors(1, seed=9)[0], camera="c9", metadata={"moved": True})
    (res3,) = store.upsert([new])
    assert res3.created is False and store.count() == 20
    got = store.get("p3", with_embedding=True)
    assert got.camera == "c9" and got.time is None and got.metadata == {"moved": True}
    np.testing.assert_allclose(got.embedding, new.embedding, atol=1e-6)
    assert store.search(new.embedding, 1)[0][0].id == "p3"
    deleted = store.delete("p3")
    assert deleted is not None and deleted.id == "p3"
    assert store.delete("p3") is None and store.get("p3") is None and store.count() == 19
    assert store.existing(["p1", "p3", "nope", "p19"]) == {"p1", "p19"} and store.existing([]) == set()
    assert all(h.id != "p3" for h in store.search(new.embedding, 19)[0])
    (again,) = store.upsert([recs[3]])  # re-adding a deleted id creates it again
    assert again.created is True and store.count() == 20 and store.existing(["p3"]) == {"p3"}


def test_search_ranks_by_inner_product(make_store: StoreFactory) -> None:
    store = make_store()
    recs = records(50)
    store.upsert(recs)
    x = np.stack([r.embedding for r in recs])
    for qi in (0, 17, 49):
        hits = store.search(x[qi], 5)[0]
        want = np.argsort(-(x @ x[qi]))[:5]
        assert [h.id for h in hits] == [f"p{i}" for i in want]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
        assert hits[0].metadata == {"i": qi} and hits[0].camera == f"c{qi % 3}"
    two = store.search(x[:2], 3)
    assert [h[0].id for h in two] == ["p0", "p1"]
    assert len(store.search(x[0], 500)[0]) == 50


def test_search_filters(make_store: StoreFactory) -> None:
    store = make_store()
    recs = records(60, cams=6)  # cameras c0..c5, times 0..59
    store.upsert(recs)
    q = recs[0].embedding
    hits = store.search(q, 10, SearchFilter(exclude_cameras=frozenset({"c0"})))[0]
    assert len(hits) == 10 and all(h.camera != "c0" for h in hits)
    hits = store.search(q, 10, SearchFilter(cameras=frozenset({"c5"})))[0]
    assert {h.camera for h in hits} == {"c5"} and len(hits) == 10  # all 10 of c5, deep in the ranking
    hits = store.search(q, 100, SearchFilter(time_min=10, time_max=19.5))[0]
    assert sorted(int(h.time) for h in hits) == list(range(10, 20))
    hits = store.search(q, 3, SearchFilter(exclude_ids=frozenset({"p0"})))[0]
    assert "p0" not in [h.id for h in hits] and len(hits) == 3
    assert store.search(q, 5, SearchFilter(cameras=frozenset({"nowhere"})))[0] == []


def test_bad_input_is_a_gallery_error(make_store: StoreFactory) -> None:
    store = make_store()
    good = records(2)
    with pytest.raises(GalleryError, match="twice"):
        store.upsert([good[0], good[0]])
    with pytest.raises(GalleryError, match="not allowed"):
        store.upsert([GalleryRecord("../etc/passwd", good[0].embedding)])
    with pytest.raises(GalleryError, match="16 finite float32"):
        store.upsert([GalleryRecord("x", np.ones(8, np.float32))])
    with pytest.raises(GalleryError, match="queries must be"):
        store.search(np.ones(8, np.float32), 1)
    with pytest.raises(GalleryError, match="NaN"):
        store.search(np.full(DIM, np.nan, np.float32), 1)
    with pytest.raises(GalleryError, match="k must be"):
        store.search(good[0].embedding, 0)
    assert store.count() == 0  # nothing half-written


def test_reopen_keeps_everything(make_store: StoreFactory) -> None:
    store = make_store()
    recs = records(30)
    store.upsert(recs)
    store.delete("p7")
    store.close()
    again = make_store()
    assert again.count() == 29 and again.get("p7") is None
    assert again.get("p8").metadata == {"i": 8}
    assert again.search(recs[12].embedding, 1)[0][0].id == "p12"


def test_refuses_other_dimension_or_model(make_store: StoreFactory) -> None:
    make_store(model_id="m1").close()
    with pytest.raises(StoreError, match="dimensional"):
        make_store(dim=DIM * 2, model_id="m1")
    with pytest.raises(StoreError, match="another model"):
        make_store(model_id="m2")
    make_store(model_id="m2", accept_model_change=True).close()
    make_store(model_id="m2").close()  # accepted once: the gallery now belongs to m2


# -- SQLite + FAISS specifics ---------------------------------------------------------------------------------------
def _stats(store: SqliteFaissStore) -> dict[str, Any]:
    return store.stats()


def _write_then_crash(folder: Path, index: str = "ivf", before_snapshot: str = "") -> None:
    """In a subprocess: 30 items (then ``before_snapshot``), a snapshot, then 10 more items, ``p3`` deleted and
    ``p4`` replaced by ``x[39]`` after it, and an exit without ``close()`` (so no final snapshot)."""
    script = textwrap.dedent(f"""
        import os
        import numpy as np
        from reidserve.service.sqlite_store import SqliteFaissStore
        from reidserve.service.store import GalleryRecord
        x = np.random.default_rng(0).standard_normal((40, {DIM})).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        s = SqliteFaissStore({str(folder)!r}, {DIM}, model_id="m", index={index!r}, snapshot_interval=0)
        s.upsert([GalleryRecord(f"p{{i}}", x[i]) for i in range(30)])
        {before_snapshot}
        assert s.snapshot()
        s.upsert([GalleryRecord(f"p{{i}}", x[i]) for i in range(30, 40)])  # after the snapshot
        s.delete("p3")                                                     # a tombstone after it
        s.upsert([GalleryRecord("p4", x[39])])                             # a replacement after it
        os._exit(0)                                                        # no close(): no final snapshot
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=env)


def test_snapshot_then_replay_after_crash(tmp_path: Path) -> None:
    """Writes after the last snapshot are replayed from the store when the process died without closing."""
    folder = tmp_path / "g"
    _write_then_crash(folder)
    header, _ = read_snapshot_file(folder / SNAPSHOT_FILE)
    assert header["seq"] == 30 and header["ntotal"] == 30
    x = vectors(40)
    with SqliteFaissStore(folder, DIM, model_id="m") as s:
        st = s.stats()
        assert st["items"] == st["store_rows"] == st["index"]["ntotal"] == 39
        assert s.get("p3") is None
        assert [h.id for h in s.search(x[39], 2)[0]] in (["p39", "p4"], ["p4", "p39"])
        assert s.search(x[35], 1)[0][0].id == "p35"
        assert s.search(x[4], 1)[0][0].id != "p4"


def test_corrupt_or_foreign_snapshot_rebuilds(tmp_path: Path) -> None:
    x = vectors(20)
    with SqliteFaissStore(tmp_path, DIM, model_id="m") as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(20)])
    snap = tmp_path / SNAPSHOT_FILE
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="checksum"):
        read_snapshot_file(snap)
    with SqliteFaissStore(tmp_path, DIM, model_id="m") as s:
        assert s.stats()["index"]["ntotal"] == 20 and s.search(x[5], 1)[0][0].id == "p5"
    # a snapshot that claims to be newer than the store (e.g. the database was restored from a backup)
    header, payload = read_snapshot_file(snap)
    write_snapshot_file(snap, dict(header, seq=header["seq"] + 100), payload)
    with SqliteFaissStore(tmp_path, DIM, model_id="m") as s:
        assert s.stats()["index"]["ntotal"] == 20 and s.search(x[6], 1)[0][0].id == "p6"


def test_snapshot_drops_old_tombstones(tmp_path: Path) -> None:
    import sqlite3

    x = vectors(10)
    with SqliteFaissStore(tmp_path, DIM, model_id="m", snapshot_interval=0) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(10)])
        s.delete("p1")
        s.delete("p2")
        db = sqlite3.connect(tmp_path / "gallery.sqlite3")
        assert db.execute("SELECT COUNT(*) FROM items WHERE deleted = 1").fetchone()[0] == 2
        assert s.snapshot()
        assert db.execute("SELECT COUNT(*) FROM items WHERE deleted = 1").fetchone()[0] == 0
        assert s.snapshot() is False  # nothing changed since
        db.close()
    with SqliteFaissStore(tmp_path, DIM, model_id="m") as s:
        assert s.count() == 8 and s.get("p1") is None


def test_ivf_takes_over_at_the_threshold(tmp_path: Path) -> None:
    """Flat below the threshold; a trained IVF index after it, with the same top-1 answers, surviving deletes,
    replacements and a restart."""
    n = 1200
    centers = vectors(60, seed=1)
    rng = np.random.default_rng(2)
    x = centers[np.arange(n) % 60] + 0.15 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    recs = [GalleryRecord(f"p{i}", x[i]) for i in range(n)]
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="ivf", ivf_threshold=1000, nprobe=8) as s:
        s.upsert(recs[:900])
        assert s.wait_idle() and s.stats()["index"]["kind"] == "flat"
        s.upsert(recs[900:])
        assert s.wait_idle(timeout=120)
        st = s.stats()
        assert st["index"]["kind"] == "ivf" and st["index"]["ntotal"] == n and st["index"]["train_error"] is None
        top1 = [s.search(x[i], 1)[0][0].id for i in range(0, n, 7)]
        assert np.mean([t == f"p{i}" for t, i in zip(top1, range(0, n, 7), strict=True)]) > 0.95
        s.delete("p10")
        s.upsert([GalleryRecord("p11", x[500])])
        assert s.get("p10") is None and s.count() == n - 1
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="ivf", ivf_threshold=1000, nprobe=8) as s:
        st = s.stats()
        assert st["index"]["kind"] == "ivf" and st["index"]["ntotal"] == n - 1 == st["store_rows"]
        assert "p10" not in {h.id for h in s.search(x[10], 20)[0]}
    # asking for a flat index over an IVF snapshot rebuilds an exact one
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="flat") as s:
        assert s.stats()["index"]["kind"] == "flat" and s.count() == n - 1


def test_ivf_is_retrained_when_the_gallery_grows_4x(tmp_path: Path) -> None:
    x = vectors(4200, seed=3)
    with SqliteFaissStore(tmp_path, DIM, index="ivf", ivf_threshold=1000) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(1000)])
        assert s.wait_idle()
        first = s.stats()["index"]
        assert first["kind"] == "ivf" and first["trained_n"] == 1000
        for start in range(1000, 4200, 400):
            s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(start, start + 400)])
            assert s.wait_idle()
        again = s.stats()["index"]
        assert again["trained_n"] >= 4000 and again["nlist"] > first["nlist"] and again["ntotal"] == 4200
    with SqliteFaissStore(tmp_path, DIM, index="ivf", ivf_threshold=1000) as s:  # kept by the snapshot
        assert s.stats()["index"]["trained_n"] == again["trained_n"] and s.count() == 4200


def test_ivf_with_a_fixed_nlist_is_retrained_on_a_4x_larger_sample(tmp_path: Path) -> None:
    x = vectors(4200, seed=4)
    with SqliteFaissStore(tmp_path, DIM, index="ivf", ivf_threshold=1000, nlist=16) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(1000)])
        assert s.wait_idle() and s.stats()["index"]["trained_n"] == 1000
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(1000, 4200)])
        assert s.wait_idle(timeout=120)
        st = s.stats()["index"]
        assert st["trained_n"] == 4200 and st["nlist"] == 16 and st["ntotal"] == 4200


@pytest.mark.parametrize("codec", ["sq8", "flat"])
def test_ivf_codecs(tmp_path: Path, codec: str) -> None:
    """sq8 (the default) and flat IVF lists: scores near (sq8) or equal to (flat) the exact inner products, the
    codec kept by the snapshot, and a snapshot of the other codec rebuilt."""
    dim, n = 64, 3000
    x = vectors(n, seed=5, dim=dim)
    q = vectors(20, seed=6, dim=dim)
    kw: dict[str, Any] = {"index": "ivf", "ivf_threshold": 1000, "nprobe": 64}
    with SqliteFaissStore(tmp_path, dim, ivf_codec=codec, **kw) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(n)])
        assert s.wait_idle(timeout=120)
        st = s.stats()["index"]
        assert st["kind"] == "ivf" and st["codec"] == codec and st["nprobe"] >= st["nlist"]  # every list: exact
        for qi, hits in zip(q, s.search(q, 10), strict=True):
            exact = np.sort(x @ qi)[::-1][:10]
            got = np.array([h.score for h in hits])
            tol = 5e-3 if codec == "sq8" else 1e-5
            np.testing.assert_allclose(got, [x[int(h.id[1:])] @ qi for h in hits], atol=tol)
            assert len({h.id for h in hits} & {f"p{i}" for i in np.argsort(-(x @ qi))[:10]}) >= 9
            assert got[0] == pytest.approx(exact[0], abs=5e-3)
    with SqliteFaissStore(tmp_path, dim, ivf_codec=codec, **kw) as s:
        assert not s.stats()["startup"]["rebuilt"] and s.stats()["index"]["codec"] == codec
    other = "flat" if codec == "sq8" else "sq8"
    with SqliteFaissStore(tmp_path, dim, ivf_codec=other, **kw) as s:
        st = s.stats()
        assert st["startup"]["rebuilt"] and st["index"]["codec"] == other and st["index"]["ntotal"] == n
    with pytest.raises(StoreError, match="unknown IVF codec 'pq'"):
        SqliteFaissStore(tmp_path / "x", dim, ivf_codec="pq")
    assert SqliteFaissStore.__init__.__kwdefaults__["ivf_codec"] == "sq8"


def test_one_process_per_data_dir(tmp_path: Path) -> None:
    with SqliteFaissStore(tmp_path, DIM):
        with pytest.raises(StoreError, match="in use by another reidserve process"):
            SqliteFaissStore(tmp_path, DIM)
    SqliteFaissStore(tmp_path, DIM).close()  # released on close


def test_open_store_urls(tmp_path: Path) -> None:
    with open_store("sqlite", tmp_path, DIM) as s:  # type: ignore[attr-defined]
        assert s.kind == "sqlite+faiss"
    with pytest.raises(StoreError, match="not understood"):
        open_store("redis://x", tmp_path, DIM)
    with pytest.raises(StoreError, match=r"\.db"):
        open_store("milvus-lite:///tmp/gallery", tmp_path, DIM)


def test_normalize_embedding() -> None:
    v = normalize_embedding([3.0, 4.0], 2)
    assert v.dtype == np.float32 and np.allclose(v, [0.6, 0.8])
    for bad, msg in (([1.0], "has 1 values"), ([0.0, 0.0], "all zeros"), ([np.inf, 1.0], "NaN or infinite"),
                     ([[1.0, 2.0]], "has \\[1, 2\\] values"), (["a", "b"], "list of 2 numbers")):
        with pytest.raises(GalleryError, match=msg):
            normalize_embedding(bad, 2)


# -- HNSW: tombstones, rebuild, snapshots ---------------------------------------------------------------------------
def test_hnsw_deletes_and_replacements_never_return_stale_vectors(tmp_path: Path) -> None:
    x = vectors(300, seed=5)
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="hnsw", snapshot_interval=0) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(300)])
        for i in range(0, 40):
            s.delete(f"p{i}")
        s.upsert([GalleryRecord(f"p{i}", -x[i]) for i in range(40, 50)])  # replaced: the old vector is gone
        st = s.stats()
        assert st["items"] == st["store_rows"] == st["index"]["ntotal"] == 260
        assert st["index"]["kind"] == "hnsw" and st["index"]["tombstones"] == 50
        for i in range(50):
            hits = s.search(x[i], 20)[0]
            assert all(h.id not in {f"p{j}" for j in range(40)} for h in hits)
            assert all(not (h.id == f"p{i}" and h.score > 0) for h in hits)  # never the replaced vector
        assert s.search(-x[45], 1)[0][0].id == "p45"
        assert len(s.search(x[100], 260)[0]) == 260
        # filters and k: every hit is live, and hits match exact search on the live vectors
        live = {f"p{i}": (x[i] if i >= 50 else -x[i]) for i in range(40, 300)}
        flt = SearchFilter(exclude_ids=frozenset({"p100"}))
        got = [h.id for h in s.search(x[100], 5, flt)[0]]
        exact = sorted((k for k in live if k != "p100"), key=lambda k: -float(live[k] @ x[100]))[:5]
        assert got == exact


def test_hnsw_rebuilds_without_tombstones_and_round_trips(tmp_path: Path) -> None:
    x = vectors(200, seed=6)
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="hnsw", hnsw_m=16, ef_search=40,
                          snapshot_interval=0) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(200)])
        assert s.snapshot()
        for i in range(60):  # 30% tombstones: the graph is rebuilt from the live vectors in the background
            s.delete(f"p{i}")
        assert s.wait_idle()
        st = s.stats()["index"]
        # rebuilt once 41 were dead (> 20%); the later deletes are tombstones in the new graph
        assert st["tombstones"] < 41 and st["ntotal"] == 140 and st["hnsw_m"] == 16 and st["ef_search"] == 40
        assert s.search(x[0], 1)[0][0].id != "p0" and s.search(x[70], 1)[0][0].id == "p70"
        s.delete("p61")  # a tombstone kept in the next snapshot
        dead = s.stats()["index"]["tombstones"]
        assert 0 < dead <= 20
        before = [[h.id for h in row] for row in s.search(x[100:110], 5)]
    header, _ = read_snapshot_file(tmp_path / SNAPSHOT_FILE)
    assert header["kind"] == "hnsw" and header["ntotal"] == 139
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="hnsw", ef_search=40) as s:
        st = s.stats()
        assert st["startup"]["rebuilt"] is False and st["startup"]["replayed"] == 0
        assert st["index"]["tombstones"] == dead and st["items"] == st["index"]["ntotal"] == 139
        assert [[h.id for h in row] for row in s.search(x[100:110], 5)] == before
        assert all(h.id != "p61" for h in s.search(x[61], 10)[0])
    # another kind asked for: the snapshot is not used, the index is rebuilt from the store (and back)
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="flat") as s:
        assert s.stats()["startup"]["rebuilt"] and s.stats()["index"]["kind"] == "flat" and s.count() == 139
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="hnsw") as s:
        assert s.stats()["startup"]["rebuilt"] and s.stats()["index"]["kind"] == "hnsw" and s.count() == 139


def test_hnsw_replay_after_crash(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    _write_then_crash(folder, index="hnsw", before_snapshot='s.delete("p1")  # a tombstone in the snapshot')
    header, _ = read_snapshot_file(folder / SNAPSHOT_FILE)
    assert header["kind"] == "hnsw" and header["ntotal"] == 29
    x = vectors(40)
    with SqliteFaissStore(folder, DIM, model_id="m", index="hnsw") as s:
        st = s.stats()
        assert not st["startup"]["rebuilt"] and st["startup"]["replayed"] > 0
        assert st["items"] == st["store_rows"] == st["index"]["ntotal"] == 38
        assert s.get("p3") is None and s.get("p1") is None
        assert sorted(h.id for h in s.search(x[39], 2)[0]) == ["p39", "p4"]
        assert s.search(x[35], 1)[0][0].id == "p35"
        assert all(h.id not in ("p1", "p3") for h in s.search(x[3], 38)[0])
        assert s.search(x[4], 1)[0][0].id != "p4"


def test_ivf_snapshot_from_before_the_codec_keeps_its_nprobe(tmp_path: Path) -> None:
    """A snapshot written before the ~8 sqrt(n) lists rule (no codec in its header) keeps visiting 1/16 of its
    lists when nprobe is left to the default; a new one visits 1/32."""
    x = vectors(3000, seed=7, dim=32)
    kw: dict[str, Any] = {"index": "ivf", "ivf_threshold": 1000, "ivf_codec": "flat", "nlist": 512}
    with SqliteFaissStore(tmp_path, 32, **kw) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(3000)])
        assert s.wait_idle(timeout=120) and s.stats()["index"]["nprobe"] == 16
    header, payload = read_snapshot_file(tmp_path / SNAPSHOT_FILE)
    assert header.pop("codec") == "flat"
    write_snapshot_file(tmp_path / SNAPSHOT_FILE, header, payload)
    with SqliteFaissStore(tmp_path, 32, **kw) as s:
        st = s.stats()
        assert not st["startup"]["rebuilt"] and st["index"]["nprobe"] == 32 and st["index"]["nlist"] == 512
    with SqliteFaissStore(tmp_path, 32, nprobe=8, **kw) as s:  # an explicit nprobe wins
        assert s.stats()["index"]["nprobe"] == 8


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_a_replaced_index_is_freed_while_the_collector_is_frozen(tmp_path: Path, kind: str) -> None:
    """The service freezes the garbage collector after start-up (gc.freeze): an index replaced later (IVF
    retraining, HNSW rebuild) must still be freed, i.e. by reference counting, not left to the collector."""
    import gc
    import weakref

    x = vectors(4200, seed=8)
    with SqliteFaissStore(tmp_path, DIM, index=kind, ivf_threshold=1000, snapshot_interval=0) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(1000)])
        assert s.wait_idle(timeout=120)
        old = weakref.ref(s._index)
        gc.collect()
        gc.freeze()
        try:
            if kind == "ivf":
                s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(1000, 4200)])  # 4x: retrained
            else:
                for i in range(400):
                    s.delete(f"p{i}")
                s.snapshot()  # tombstones over 20%: rebuilt
            assert s.wait_idle(timeout=120)
            assert old() is None
        finally:
            gc.unfreeze()


# -- snapshots written concurrently, data files private (issue 17) --------------------------------------------------
def test_concurrent_snapshot_writes_never_share_a_temporary_file(tmp_path: Path) -> None:
    """With one shared ``index.snapshot.tmp``, a writer could rename another's file away (No such file)."""
    path = tmp_path / SNAPSHOT_FILE
    payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        for i in range(20):
            try:
                write_snapshot_file(path, {"seq": n * 100 + i, "format": "test"}, payload)
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    header, got = read_snapshot_file(path)
    assert header["format"] == "test" and np.array_equal(got, payload)
    assert [p.name for p in tmp_path.iterdir()] == [SNAPSHOT_FILE]  # no temporary file left behind


def test_concurrent_snapshots_keep_the_newest(tmp_path: Path) -> None:
    x = vectors(400, seed=11)
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="hnsw", snapshot_interval=0) as s:
        errors: list[BaseException] = []
        stop = threading.Event()

        def snapshots() -> None:
            while not stop.is_set():
                try:
                    s.snapshot()
                except Exception as exc:  # noqa: BLE001 - collected for the assertion
                    errors.append(exc)

        threads = [threading.Thread(target=snapshots) for _ in range(3)]
        for t in threads:
            t.start()
        for start in range(0, 400, 20):
            s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(start, start + 20)])
        stop.set()
        for t in threads:
            t.join()
        s.snapshot()
        assert not errors, errors[:3]
        seq = s.stats()["seq"]
    header, _ = read_snapshot_file(tmp_path / SNAPSHOT_FILE)
    assert header["seq"] == seq and header["ntotal"] == 400


def test_a_failed_snapshot_after_a_rebuild_is_reported_as_a_snapshot_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The rebuilt graph serves; the log says the snapshot failed, and train_error (a failed build) stays None."""
    import reidserve.service.sqlite_store as sqlite_store

    x = vectors(200, seed=12)
    with SqliteFaissStore(tmp_path, DIM, model_id="m", index="hnsw", snapshot_interval=0) as s:
        s.upsert([GalleryRecord(f"p{i}", x[i]) for i in range(200)])

        def disk_full(*args: Any, **kwargs: Any) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(sqlite_store, "write_snapshot_file", disk_full)
        with caplog.at_level("INFO", logger="reidserve.service.sqlite_store"):
            for i in range(60):  # 30% tombstones: the graph is rebuilt in the background, then snapshotted
                s.delete(f"p{i}")
            assert s.wait_idle()
        st = s.stats()["index"]
        assert st["train_error"] is None and st["tombstones"] < 41 and st["ntotal"] == 140
        messages = [r.getMessage() for r in caplog.records]
        assert any("HNSW graph rebuilt" in m for m in messages)
        failed = [m for m in messages if "failed" in m]
        assert failed and all("index snapshot after the HNSW graph rebuild failed" in m for m in failed), failed
        assert "No space left on device" in failed[0]
        monkeypatch.undo()  # the final snapshot at close works again


def test_gallery_files_are_private(tmp_path: Path) -> None:
    """gallery.sqlite3 (and its -wal, -shm), index.snapshot and gallery.lock are 0600 like the token file, also
    those of a gallery made before (0644), which are tightened when it opens."""
    old_umask = os.umask(0o022)
    try:
        folder = tmp_path / "g"
        with SqliteFaissStore(folder, DIM, snapshot_interval=0) as s:
            s.upsert(records(5))
            assert s.snapshot()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert {"gallery.sqlite3", "gallery.sqlite3-wal", "gallery.sqlite3-shm", "gallery.lock",
                SNAPSHOT_FILE} <= set(modes), modes
        assert set(modes.values()) == {0o600}, modes
        for p in folder.iterdir():
            os.chmod(p, 0o644)
        with SqliteFaissStore(folder, DIM, snapshot_interval=0) as s:
            assert s.count() == 5
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert set(modes.values()) == {0o600}, modes
    finally:
        os.umask(old_umask)
