"""The embedded gallery: SQLite (WAL, the durable record) plus a FAISS index (the fast search), kept level.

Files in the data folder::

    gallery.sqlite3   items (id, int64 FAISS id, sequence number, camera, time, metadata, vector) + info
    index.snapshot    the FAISS index and the sequence number it reflects (see :mod:`.faiss_index`)
    gallery.lock      held (flock) while a process has the gallery open: one server per folder

**Durability.** Every write (an upsert of a batch of items, or a delete) is one SQLite transaction in WAL mode
with ``synchronous=FULL``; the call returns -- and the service acknowledges -- only after ``COMMIT``, so an
acknowledged write survives a crash of the process or the machine. Each changed row gets the next value of a
monotonically increasing sequence number (kept in ``info``, never reused); a delete leaves a *tombstone* row
(``deleted = 1``) carrying its sequence number.

**Index and store agree.** After the commit the change is applied to the FAISS index under the index lock. On
start the index is loaded from its snapshot and the rows with a sequence number above the snapshot's are
replayed (tombstones remove, live rows replace), then the set of ids in the index is compared with the live
rows of the store; any difference, or an unreadable snapshot, rebuilds the index from the store. Snapshots are
written atomically every ``snapshot_interval`` seconds when something changed, after an IVF index is trained,
and on close; tombstones older than the snapshot are then dropped.

**Index kinds.** ``hnsw``: an HNSW graph (``--hnsw-m`` neighbours, ``--ef-search``) from the start; deletes and
replaced vectors are tombstones skipped by every search, and the graph is rebuilt from the store's live vectors
in the background (like IVF training) once tombstones exceed 20% of it (checked after writes and snapshots).
``flat``: exact ``IndexIDMap2(IndexFlatIP)``. ``ivf``: flat until the gallery holds
``ivf_threshold`` items, then an IVF index (about 8 sqrt(n) lists, ``nprobe`` lists searched, approximate; lists
coded ``ivf_codec``: ``sq8`` 8-bit scalar quantisation, the default, or ``flat`` float32; a snapshot with the
other codec is rebuilt)
trained in a background thread on the store's vectors at one sequence number and swapped in after replaying the
writes made meanwhile; trained again the same way when the gallery has grown 4x since. String ids map to FAISS
int64 ids through the store's ``fid`` column (``AUTOINCREMENT``: never reused).

**Threads.** FAISS allows no mutation concurrent with a search: one lock (``_index_lock``) covers every index
call and the in-memory id/metadata maps; a second (``_write_lock``) serialises writers, so index mutations happen
in sequence-number order.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .faiss_index import (
    INDEX_KINDS,
    IVF_CODECS,
    SNAPSHOT_FORMAT,
    SnapshotError,
    VectorIndex,
    choose_nlist,
    gpu_available,
    write_snapshot_file,
)
from .store import (
    GalleryError,
    GalleryRecord,
    Hit,
    SearchFilter,
    StoredItem,
    StoreError,
    WriteResult,
    check_id,
    check_queries,
    check_records,
    dump_metadata,
    load_metadata,
)

log = logging.getLogger("reidserve.service")

DB_FILE = "gallery.sqlite3"
SNAPSHOT_FILE = "index.snapshot"
LOCK_FILE = "gallery.lock"
STORE_FORMAT = "reidserve.gallery/1"
INLINE_FLOATS = 1_000_000  # a query reading up to this many floats (~0.3 ms) may run on the event loop

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    fid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    camera TEXT,
    ts REAL,
    meta TEXT,
    vec BLOB
);
CREATE INDEX IF NOT EXISTS items_seq ON items (seq);
CREATE INDEX IF NOT EXISTS items_deleted ON items (deleted);
"""


@dataclass
class _Entry:
    id: str
    camera: str | None
    time: float | None
    meta: str | None
    seq: int


class _DirLock:
    """An exclusive ``flock`` on ``path`` (no-op where ``fcntl`` does not exist)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise StoreError(f"{path.parent} is in use by another reidserve process"
                             f"{f' (pid {holder})' if holder else ''}; stop it or give another --data-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class SqliteFaissStore:
    """The SQLite + FAISS :class:`~reidserve.service.store.GalleryStore` (see the module docstring)."""

    kind = "sqlite+faiss"

    def __init__(self, data_dir: str | Path, dim: int, *, model_id: str = "", accept_model_change: bool = False,
                 index: str = "ivf", ivf_threshold: int = 20_000, nlist: int = 0, nprobe: int = 0,
                 hnsw_m: int = 0, ef_search: int = 0, ivf_codec: str = "sq8",
                 snapshot_interval: float = 60.0, faiss_threads: int = 1, gpu: str = "auto",
                 on_change: Callable[[], None] | None = None) -> None:
        if index not in INDEX_KINDS:
            raise StoreError(f"unknown index kind {index!r}; choose flat, ivf or hnsw")
        if ivf_codec not in IVF_CODECS:
            raise StoreError(f"unknown IVF codec {ivf_codec!r}; choose {' or '.join(IVF_CODECS)}")
        if gpu not in ("auto", "on", "off"):
            raise StoreError(f"gpu must be auto, on or off, got {gpu!r}")
        if gpu == "on" and not gpu_available():
            raise StoreError("--faiss-gpu on needs a FAISS build with GPU support and a visible GPU "
                             "(pip install faiss-gpu-cu12), or use --faiss-gpu auto")
        if dim < 1:
            raise StoreError(f"the embedding dimension must be positive, got {dim}")
        self.dim = int(dim)
        self.folder = Path(data_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index_kind = index
        self.ivf_threshold = max(1, int(ivf_threshold))
        self.nlist, self.nprobe = int(nlist), int(nprobe)
        self.hnsw_m, self.ef_search = int(hnsw_m), int(ef_search)
        self.ivf_codec = ivf_codec
        self.snapshot_interval = float(snapshot_interval)
        self.use_gpu = gpu == "on" or (gpu == "auto" and gpu_available())
        self.model_id = model_id
        self.on_change = on_change
        # OpenMP's thread count is per calling thread: it is set again in every thread that calls FAISS
        self.faiss_threads = max(1, int(faiss_threads or 1))
        faiss.omp_set_num_threads(self.faiss_threads)
        self._write_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._fids: dict[str, int] = {}
        self._seq = 0
        self._applied_seq = 0
        self._snapshot_seq = -1
        self._snapshot_time: float | None = None
        self._training = False
        self._train_base: int | None = None
        self._train_error: str | None = None
        self._closed = True
        self._stop = threading.Event()
        self._lock = _DirLock(self.folder / LOCK_FILE)
        try:
            self._db = self._connect()
            self._read_db = self._connect()
            self._init_info(accept_model_change)
            self._load()
        except BaseException:
            self._lock.release()
            raise
        self._closed = False
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="reidserve-snapshot", daemon=True)
        self._snapshotter.start()
        self._maybe_train()

    # -- opening ----------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        path = self.folder / DB_FILE
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} cannot be opened as a gallery database ({exc}); move it away or give "
                             "another --data-dir") from exc
        return db

    def _init_info(self, accept_model_change: bool) -> None:
        info = dict(self._db.execute("SELECT key, value FROM info").fetchall())
        path = self.folder / DB_FILE
        if not info:
            self._db.executemany("INSERT INTO info (key, value) VALUES (?, ?)", [
                ("format", STORE_FORMAT), ("dim", str(self.dim)), ("model", self.model_id), ("seq", "0"),
                ("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))])
            return
        if info.get("format") != STORE_FORMAT:
            raise StoreError(f"{path} is not a reidserve gallery (format {info.get('format')!r})")
        if int(info.get("dim", -1)) != self.dim:
            raise StoreError(f"{self.folder} holds {info.get('dim')}-dimensional embeddings but the model outputs "
                             f"{self.dim}: give a new --data-dir for this model")
        stored_model = info.get("model", "")
        if self.model_id and stored_model and stored_model != self.model_id:
            if not accept_model_change:
                raise StoreError(f"{self.folder} was filled by another model ({stored_model[:16]}..., this one is "
                                 f"{self.model_id[:16]}...); embeddings of different models are not comparable: "
                                 "give a new --data-dir, or pass --accept-model-change if the new model produces "
                                 "the same embeddings")
            self._db.execute("UPDATE info SET value = ? WHERE key = 'model'", (self.model_id,))
            log.warning("gallery %s: the model changed (%s -> %s), accepted", self.folder, stored_model[:16],
                        self.model_id[:16])
        self._seq = int(info.get("seq", "0"))

    def _rows(self, sql: str, args: tuple[Any, ...] = (), db: sqlite3.Connection | None = None,
              chunk: int = 8192) -> Iterator[list[tuple[Any, ...]]]:
        cur = (db or self._db).execute(sql, args)
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            yield rows

    def _load(self) -> None:
        t0 = time.perf_counter()
        for rows in self._rows("SELECT fid, id, camera, ts, meta, seq FROM items WHERE deleted = 0"):
            for fid, item_id, camera, ts, meta, seq in rows:
                self._entries[fid] = _Entry(item_id, camera, ts, meta, seq)
                self._fids[item_id] = fid
        index, how = None, ""
        self.startup: dict[str, Any] = {"snapshot_seq": None, "replayed": 0, "rebuilt": False}
        snap = self.folder / SNAPSHOT_FILE
        if snap.exists():
            try:
                index, header = VectorIndex.read_snapshot(snap, dim=self.dim, nprobe=self.nprobe,
                                                          ef_search=self.ef_search, use_gpu=self.use_gpu)
                snap_seq = int(header.get("seq", -1))
                if header.get("model", "") != self.model_id and self.model_id:
                    raise SnapshotError(f"{snap} was written for another model")
                if snap_seq > self._seq or snap_seq < 0:
                    raise SnapshotError(f"{snap} is newer than the store (seq {snap_seq} > {self._seq})")
                if index.kind == "ivf" and self.index_kind == "flat":
                    raise SnapshotError(f"{snap} holds an IVF index but --index flat was asked for")
                if (index.kind == "hnsw") != (self.index_kind == "hnsw"):
                    raise SnapshotError(f"{snap} holds a {index.kind} index, not the {self.index_kind} one asked for")
                if index.kind == "ivf" and index.codec != self.ivf_codec:
                    raise SnapshotError(f"{snap} holds an IVF index with {index.codec} lists, not {self.ivf_codec}")
                if index.kind == "hnsw" and self.hnsw_m and index.hnsw_m != self.hnsw_m:
                    raise SnapshotError(f"{snap} holds an HNSW graph with M {index.hnsw_m}, not {self.hnsw_m}")
                replayed = self._replay(index, snap_seq)
                self._snapshot_seq = snap_seq
                self._snapshot_time = snap.stat().st_mtime
                self.startup.update(snapshot_seq=snap_seq, replayed=replayed)
                how = f"snapshot at seq {snap_seq} + {replayed} replayed rows"
            except SnapshotError as exc:
                log.warning("index snapshot not used (%s); rebuilding the index from the store", exc)
                index = None
        if index is not None and not self._agrees(index):
            log.warning("the index snapshot disagrees with the store; rebuilding the index from the store")
            index = None
        if index is None:
            index = self._build_from_store()
            how = "rebuilt from the store"
            self.startup.update(snapshot_seq=None, replayed=0, rebuilt=True)
        self._index = index
        self._applied_seq = self._seq
        self.startup.update(seq=self._seq, seconds=round(time.perf_counter() - t0, 3))
        log.info("gallery %s: %d items, %s index (%s) in %.2f s", self.folder, len(self._entries), index.kind, how,
                 time.perf_counter() - t0)

    def _replay(self, index: VectorIndex, after_seq: int, db: sqlite3.Connection | None = None) -> int:
        """Apply every row written after ``after_seq`` to ``index``; returns how many."""
        n = 0
        present = set(index.ids().tolist())
        for rows in self._rows("SELECT fid, deleted, vec FROM items WHERE seq > ? ORDER BY seq", (after_seq,),
                               db=db):
            drop = np.array([r[0] for r in rows if r[0] in present], dtype=np.int64)
            index.remove(drop)
            present.difference_update(drop.tolist())
            live = [(r[0], r[2]) for r in rows if not r[1]]
            if live:
                ids = np.array([fid for fid, _ in live], dtype=np.int64)
                index.add(ids, np.stack([self._vector(blob) for _, blob in live]))
                present.update(ids.tolist())
            n += len(rows)
        return n

    def _agrees(self, index: VectorIndex) -> bool:
        ids = index.ids()
        return len(ids) == len(self._entries) and set(ids.tolist()) == self._entries.keys()

    def _vector(self, blob: bytes) -> np.ndarray:
        v = np.frombuffer(blob, dtype=np.float32)
        if v.shape != (self.dim,):
            raise StoreError(f"{self.folder / DB_FILE}: a stored vector has {v.size} values, not {self.dim}; the "
                             "database is corrupted")
        return v

    def _live_vectors(self, db: sqlite3.Connection | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        for rows in self._rows("SELECT fid, vec FROM items WHERE deleted = 0", db=db):
            ids.extend(r[0] for r in rows)
            vecs.extend(self._vector(r[1]) for r in rows)
        x = np.stack(vecs) if vecs else np.zeros((0, self.dim), np.float32)
        return np.asarray(ids, dtype=np.int64), x

    def _build_from_store(self) -> VectorIndex:
        ids, x = self._live_vectors()
        if self.index_kind == "hnsw":
            return VectorIndex.build_hnsw(self.dim, x, ids, hnsw_m=self.hnsw_m, ef_search=self.ef_search)
        if self.index_kind == "ivf" and len(ids) >= self.ivf_threshold:
            return VectorIndex.train_ivf(self.dim, x, ids, nlist=self.nlist, nprobe=self.nprobe,
                                         use_gpu=self.use_gpu, codec=self.ivf_codec)
        index = VectorIndex(self.dim, "flat", use_gpu=self.use_gpu)
        index.add(ids, x)
        return index

    # -- writes -----------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the gallery is closed")

    def _commit(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            out = body(db)
            db.execute("COMMIT")
        except BaseException as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"the gallery database could not be written ({exc}); check free disk space and "
                                 f"permissions of {self.folder}") from exc
            raise
        return out

    def upsert(self, records: Sequence[GalleryRecord]) -> list[WriteResult]:
        check_records(records, self.dim)
        if not records:
            return []
        with self._write_lock:
            self._check_open()
            seq0 = self._seq

            def body(db: sqlite3.Connection) -> list[tuple[int, GalleryRecord, bool, int]]:
                out = []
                seq = seq0
                for r in records:
                    seq += 1
                    row = db.execute("SELECT fid, deleted FROM items WHERE id = ?", (r.id,)).fetchone()
                    args = (seq, r.camera, r.time, dump_metadata(r.metadata), r.embedding.tobytes())
                    if row is None:
                        fid = db.execute("INSERT INTO items (seq, camera, ts, meta, vec, id, deleted) "
                                         "VALUES (?, ?, ?, ?, ?, ?, 0)", (*args, r.id)).lastrowid
                        out.append((int(fid), r, False, seq))  # type: ignore[arg-type]
                    else:
                        db.execute("UPDATE items SET seq = ?, camera = ?, ts = ?, meta = ?, vec = ?, deleted = 0 "
                                   "WHERE fid = ?", (*args, row[0]))
                        out.append((int(row[0]), r, not row[1], seq))
                db.execute("UPDATE info SET value = ? WHERE key = 'seq'", (str(seq),))
                return out

            changes = self._commit(body)
            self._seq = changes[-1][3]
            self._apply(lambda: self._apply_upserts(changes))
            results = [WriteResult(r.id, not was_live, seq) for _, r, was_live, seq in changes]
        self._changed()
        return results

    def _apply_upserts(self, changes: list[tuple[int, GalleryRecord, bool, int]]) -> None:
        self._index.remove(np.array([fid for fid, _, was_live, _ in changes if was_live], dtype=np.int64))
        self._index.add(np.array([fid for fid, *_ in changes], dtype=np.int64),
                        np.stack([r.embedding for _, r, _, _ in changes]))
        for fid, r, _, seq in changes:
            self._entries[fid] = _Entry(r.id, r.camera, r.time, dump_metadata(r.metadata), seq)
            self._fids[r.id] = fid

    def _apply(self, change: Callable[[], None]) -> None:
        """Apply a committed change to the index (called with the write lock held)."""
        with self._index_lock:
            faiss.omp_set_num_threads(self.faiss_threads)
            try:
                change()
                self._applied_seq = self._seq
                return
            except Exception as exc:  # the store has the change: bring the index level with it
                log.error("applying a write to the FAISS index failed (%s); rebuilding the index from the store",
                          exc)
        index = self._build_from_store()
        entries, fids = self._entries_from_store()
        with self._index_lock:
            self._index, self._entries, self._fids = index, entries, fids
            self._applied_seq = self._seq

    def _entries_from_store(self) -> tuple[dict[int, _Entry], dict[str, int]]:
        entries: dict[int, _Entry] = {}
        fids: dict[str, int] = {}
        for rows in self._rows("SELECT fid, id, camera, ts, meta, seq FROM items WHERE deleted = 0"):
            for fid, item_id, camera, ts, meta, seq in rows:
                entries[fid] = _Entry(item_id, camera, ts, meta, seq)
                fids[item_id] = fid
        return entries, fids

    def delete(self, item_id: str) -> WriteResult | None:
        check_id(item_id)
        with self._write_lock:
            self._check_open()
            seq = self._seq + 1

            def body(db: sqlite3.Connection) -> int | None:
                row = db.execute("SELECT fid FROM items WHERE id = ? AND deleted = 0", (item_id,)).fetchone()
                if row is None:
                    return None
                db.execute("UPDATE items SET deleted = 1, seq = ?, vec = NULL, meta = NULL, camera = NULL, "
                           "ts = NULL WHERE fid = ?", (seq, row[0]))
                db.execute("UPDATE info SET value = ? WHERE key = 'seq'", (str(seq),))
                return int(row[0])

            fid = self._commit(body)
            if fid is None:
                return None
            self._seq = seq

            def change() -> None:
                self._index.remove(np.array([fid], dtype=np.int64))
                self._entries.pop(fid, None)
                self._fids.pop(item_id, None)

            self._apply(change)
        self._changed()
        return WriteResult(item_id, False, seq)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
        self._maybe_train()

    # -- reads ------------------------------------------------------------------------------------------------
    def get(self, item_id: str, with_embedding: bool = False) -> StoredItem | None:
        check_id(item_id)
        with self._index_lock:
            fid = self._fids.get(item_id)
            entry = self._entries.get(fid) if fid is not None else None
        if entry is None:
            return None
        vec = None
        if with_embedding:
            with self._read_lock:
                row = self._read_db.execute("SELECT vec FROM items WHERE fid = ? AND deleted = 0",
                                            (fid,)).fetchone()
            if row is None:  # deleted meanwhile
                return None
            vec = self._vector(row[0]).copy()
        return StoredItem(entry.id, entry.camera, entry.time, load_metadata(entry.meta), entry.seq, vec)

    def search(self, queries: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[list[Hit]]:
        q = check_queries(queries, self.dim, k)
        with self._index_lock:
            return self._search_locked(q, [int(k)] * len(q), [flt] * len(q))

    def search_batch(self, queries: np.ndarray, ks: Sequence[int],
                     flts: Sequence[SearchFilter | None]) -> list[list[Hit]]:
        """Like :meth:`search`, with a ``k`` and a filter per query row, in one FAISS call (a micro-batch of
        requests): row ``i`` gets exactly what ``search(queries[i], ks[i], flts[i])`` returns."""
        q = check_queries(queries, self.dim, 1)
        if len(ks) != len(q) or len(flts) != len(q):
            raise GalleryError(f"{len(q)} queries need as many k values and filters, got {len(ks)} and {len(flts)}")
        for k in ks:
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
                raise GalleryError(f"k must be a positive integer, got {k!r}")
        with self._index_lock:
            return self._search_locked(q, [int(k) for k in ks], list(flts))

    def try_search(self, queries: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[list[Hit]] | None:
        """:meth:`search` if it is cheap right now -- the index lock is free and a query reads at most
        ``INLINE_FLOATS`` values -- else None (then call :meth:`search` from a worker thread). Lets an event loop
        answer searches of small galleries without a thread hop, and never wait on the lock."""
        q = check_queries(queries, self.dim, k)
        if len(q) * self._index.scanned_per_query() > INLINE_FLOATS or (flt is not None and not flt.empty):
            return None
        if not self._index_lock.acquire(blocking=False):
            return None
        try:
            return self._search_locked(q, [int(k)] * len(q), [flt] * len(q))
        finally:
            self._index_lock.release()

    def _search_locked(self, q: np.ndarray, ks: list[int], flts: list[SearchFilter | None]) -> list[list[Hit]]:
        """Top-``ks[i]`` hits of row ``i`` passing ``flts[i]``; one FAISS search for all rows, fetching the most any
        row needs (a longer fetch leaves the first k passing hits of a row unchanged), then again, 4x wider, for
        the filtered rows that found fewer than k (until everything was looked at)."""
        flts = [None if f is None or f.empty else f for f in flts]
        found: list[list[tuple[float, _Entry]]] = [[] for _ in range(len(q))]
        # called with the index lock held
        self._check_open()
        faiss.omp_set_num_threads(self.faiss_threads)
        ntotal = self._index.ntotal
        # with a filter, fetch more than k and widen until k pass (or everything was looked at)
        want = [min(ntotal, k if f is None else max(4 * k, k + 64)) for k, f in zip(ks, flts, strict=True)]
        todo = [i for i in range(len(q)) if want[i] > 0]
        while todo:
            rest: list[int] = []
            if self._index.kind == "hnsw":  # a graph search depends on k (efSearch >= k): one search per fetch size
                fetch = min(want[i] for i in todo)
                rest = [i for i in todo if want[i] != fetch]
                todo = [i for i in todo if want[i] == fetch]
            else:
                fetch = max(want[i] for i in todo)
            rows = q if len(todo) == len(q) else np.ascontiguousarray(q[todo])
            scores, ids = self._index.search(rows, fetch)
            again = []
            for r, qi in enumerate(todo):
                k, flt = ks[qi], flts[qi]
                hits: list[tuple[float, _Entry]] = []
                for score, fid in zip(scores[r].tolist(), ids[r].tolist(), strict=True):
                    if fid < 0:
                        break
                    e = self._entries.get(fid)
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
        return [[Hit(e.id, s, e.camera, e.time, load_metadata(e.meta)) for s, e in row] for row in found]

    def count(self) -> int:
        """Items in the gallery (lock-free: ``len`` of a dict is atomic, so an event loop never waits here)."""
        return len(self._entries)

    def store_rows(self) -> int:
        """Live rows in SQLite, counted by SQL (independent of the in-memory maps)."""
        with self._read_lock:
            return int(self._read_db.execute("SELECT COUNT(*) FROM items WHERE deleted = 0").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        with self._index_lock:
            index = self._index.describe()
            items, seq, applied = len(self._entries), self._seq, self._applied_seq
        index.update(training=self._training, train_error=self._train_error,
                     ivf_threshold=self.ivf_threshold if self.index_kind == "ivf" else None)
        return {
            "backend": self.kind, "items": items, "store_rows": self.store_rows(), "index": index, "seq": seq,
            "applied_seq": applied, "snapshot_seq": self._snapshot_seq if self._snapshot_seq >= 0 else None,
            "snapshot_age_s": round(time.time() - self._snapshot_time, 1) if self._snapshot_time else None,
            "data_dir": str(self.folder), "startup": dict(self.startup),
        }

    # -- snapshots and IVF training ---------------------------------------------------------------------------
    def snapshot(self) -> bool:
        """Write the index snapshot if the index changed since the last one; drop older tombstones."""
        if self._closed:
            return False
        t0 = time.perf_counter()
        with self._index_lock:
            seq = self._applied_seq
            if seq == self._snapshot_seq:
                return False
            # serialising under the lock gives a consistent (index, seq) pair; the bytes are written outside it
            index = self._index
            payload = index.serialize()
            header = {"seq": seq, "model": self.model_id, "dim": self.dim, "kind": index.kind,
                      "nlist": index.nlist, "codec": index.codec, "ntotal": index.ntotal,
                      "trained_n": index.trained_n, "format": SNAPSHOT_FORMAT}
        size = write_snapshot_file(self.folder / SNAPSHOT_FILE, header, payload)
        self._snapshot_seq, self._snapshot_time = seq, time.time()
        # tombstones at or below the snapshot are no longer needed to replay -- unless an IVF index is being
        # trained from an older state and must catch up through them
        floor = seq if self._train_base is None else min(seq, self._train_base)
        with self._write_lock:
            if not self._closed:
                self._db.execute("DELETE FROM items WHERE deleted = 1 AND seq <= ?", (floor,))
        log.info("index snapshot at seq %d: %d vectors, %.1f MB in %.2f s", seq, header["ntotal"], size / 1e6,
                 time.perf_counter() - t0)
        self._maybe_train()  # HNSW: rebuild the graph when it holds too many tombstones
        return True

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.snapshot_interval if self.snapshot_interval > 0 else 3600.0):
            if self.snapshot_interval <= 0:
                continue
            try:
                self.snapshot()
            except Exception as exc:  # keep serving; the store is the durable record
                log.error("index snapshot failed: %s", exc)

    def _maybe_train(self) -> None:
        """Start training an IVF index in the background when the gallery reached ``ivf_threshold`` items on a
        flat index, or grew to 4x the size the current IVF index was trained at (centroids from a 4x larger sample,
        and more lists unless ``nlist`` is fixed); for HNSW,
        rebuild the graph from the live vectors when tombstones exceed ``HNSW_MAX_DEAD`` of it (checked at
        snapshot time)."""
        if self._training or self._closed or self._stop.is_set():
            return
        if self.index_kind == "hnsw":
            if self._index.needs_rebuild():
                self._training = True
                threading.Thread(target=self._train, name="reidserve-hnsw-rebuild", daemon=True).start()
            return
        if self.index_kind != "ivf":
            return
        n = self.count()
        if self._index.kind == "flat":
            if n < self.ivf_threshold:
                return
        elif n < 4 * max(self._index.trained_n, 1):
            return
        self._training = True
        threading.Thread(target=self._train, name="reidserve-ivf-train", daemon=True).start()

    def _train(self) -> None:
        """Train an IVF index on the store's vectors as of one sequence number (a read transaction on a connection
        of its own), then catch up with the writes made meanwhile and swap it in."""
        faiss.omp_set_num_threads(self.faiss_threads)
        t0 = time.perf_counter()
        try:
            db = self._connect()
            try:
                db.execute("BEGIN")  # one consistent snapshot of the WAL database for the two reads
                base_seq = int(db.execute("SELECT value FROM info WHERE key = 'seq'").fetchone()[0])
                self._train_base = base_seq  # keep the tombstones above it until the new index caught up
                ids, x = self._live_vectors(db)
                db.execute("COMMIT")
            finally:
                db.close()
            if self.index_kind == "hnsw":
                new = VectorIndex.build_hnsw(self.dim, x, ids, hnsw_m=self.hnsw_m, ef_search=self.ef_search)
            else:
                nlist = self.nlist or choose_nlist(len(ids))
                new = VectorIndex.train_ivf(self.dim, x, ids, nlist=nlist, nprobe=self.nprobe,
                                            use_gpu=self.use_gpu, codec=self.ivf_codec)
            del x
            with self._write_lock:
                if self._closed:
                    return
                with self._read_lock:
                    replayed = self._replay(new, base_seq, db=self._read_db)
                with self._index_lock:
                    if not self._agrees(new):
                        raise StoreError(f"the new {new.kind} index does not match the store after catching up")
                    self._index = new
            if new.kind == "hnsw":
                log.info("HNSW graph rebuilt without tombstones: %d vectors (+%d replayed) in %.1f s", new.ntotal,
                         replayed, time.perf_counter() - t0)
            else:
                log.info("IVF index trained: %d lists, nprobe %d, %d vectors (+%d replayed) in %.1f s", new.nlist,
                         new.nprobe, new.ntotal, replayed, time.perf_counter() - t0)
            self._train_error = None
            self.snapshot()
        except Exception as exc:
            self._train_error = str(exc)
            log.error("IVF training / HNSW rebuild failed, keeping the current index: %s", exc)
        finally:
            self._train_base = None
            self._training = False

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Wait until no IVF training runs (tests and benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._training:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._stop.set()
        self._snapshotter.join(timeout=10)
        self.wait_idle(timeout=300)
        try:
            self.snapshot()
        except Exception as exc:
            log.error("final index snapshot failed (the next start replays from the store): %s", exc)
        with self._write_lock:
            self._closed = True
            self._db.close()
            with self._read_lock:
                self._read_db.close()
        self._lock.release()

    def __enter__(self) -> SqliteFaissStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SqliteFaissStore", "GalleryError"]
