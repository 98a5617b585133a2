"""The embedded gallery: SQLite (WAL, the durable record) plus a FAISS index (the fast search), kept level.

Files in the data folder (each readable by its owner only, mode 0600, like the token file)::

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

**Index kinds** (:class:`~.faiss_index.IndexOptions`). ``flat``: exact ``IndexIDMap2(IndexFlatIP)``. ``ivf``: flat
until the gallery holds ``ivf_threshold`` items, then an IVF index (about 8 sqrt(n) lists, ``nprobe`` searched;
lists coded ``sq8``, the default, or ``flat``; a snapshot with the other codec is rebuilt) trained in a background
thread on the store's vectors at one sequence number and swapped in after replaying the writes made meanwhile;
trained again the same way when the gallery has grown 4x since. ``hnsw``: an HNSW graph from the start; deletes
and replaced vectors are tombstones skipped by every search, and the graph is rebuilt the same way once tombstones
exceed 20% of it. String ids map to FAISS int64 ids through the ``fid`` column (``AUTOINCREMENT``: never reused).

**Threads.** FAISS allows no mutation concurrent with a search: one lock (``_index_lock``) covers every index
call and the in-memory id/metadata maps; a second (``_write_lock``) serialises writers, so index mutations happen
in sequence-number order; a third serialises snapshots (each also has a temporary file of its own).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pruneopt.common.files import ExclusiveLock, LockBusy
from pruneopt.common.threads import faiss_threads as faiss_omp_threads

from .faiss_index import (
    INDEX_KINDS,
    IVF_CODECS,
    IndexOptions,
    SnapshotError,
    VectorIndex,
    check_snapshot_fits,
    gpu_available,
    write_snapshot_file,
)
from .filtered_search import filtered_top_k
from .sqlite_db import DB_FILE, PRIVATE, Entry, GalleryDatabase, UpsertRow, make_private
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

__all__ = ["DB_FILE", "LOCK_FILE", "SNAPSHOT_FILE", "GalleryError", "SqliteFaissStore"]

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "index.snapshot"
LOCK_FILE = "gallery.lock"
INLINE_FLOATS = 1_000_000  # a query reading up to this many floats (~0.3 ms) may run on the event loop


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
        self.options = IndexOptions(index, max(1, int(ivf_threshold)), int(nlist), int(nprobe), ivf_codec,
                                    int(hnsw_m), int(ef_search), gpu == "on" or (gpu == "auto" and gpu_available()))
        self.snapshot_interval = float(snapshot_interval)
        self.model_id = model_id
        self.on_change = on_change
        # OpenMP's thread count is per calling thread: every block that calls FAISS sets it (and restores it)
        self.faiss_threads = max(1, int(faiss_threads or 1))
        self._write_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._entries: dict[int, Entry] = {}
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
        self._sql = GalleryDatabase(self.folder, self.dim)
        try:
            self._lock = ExclusiveLock(self.folder / LOCK_FILE, mode=PRIVATE)
        except LockBusy as exc:
            holder = f" ({exc.holder})" if exc.holder else ""
            raise StoreError(f"{self.folder} is in use by another reidserve process{holder}; stop it or give another "
                             "--data-dir") from None
        try:
            for name in (LOCK_FILE, SNAPSHOT_FILE):  # files of a gallery from before they were private
                if (self.folder / name).exists():
                    make_private(self.folder / name)
            self._db = self._sql.connect()
            self._read_db = self._sql.connect()
            self._seq = self._sql.init_info(self._db, model_id, accept_model_change)
            with faiss_omp_threads(self.faiss_threads):
                self._load()
        except BaseException:
            self._lock.release()
            raise
        self._closed = False
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="reidserve-snapshot", daemon=True)
        self._snapshotter.start()
        self._maybe_train()

    # -- opening ----------------------------------------------------------------------------------------------
    def _load(self) -> None:
        t0 = time.perf_counter()
        self._entries, self._fids = self._sql.entries(self._db)
        index, how = None, ""
        self.startup: dict[str, Any] = {"snapshot_seq": None, "replayed": 0, "rebuilt": False}
        snap = self.folder / SNAPSHOT_FILE
        if snap.exists():
            try:
                o = self.options
                index, header = VectorIndex.read_snapshot(snap, dim=self.dim, nprobe=o.nprobe, ef_search=o.ef_search,
                                                          use_gpu=o.use_gpu)
                snap_seq = check_snapshot_fits(snap, index, header, store_seq=self._seq, model_id=self.model_id,
                                               options=self.options)
                replayed = self._sql.replay_into(index, self._db, snap_seq)
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

    def _agrees(self, index: VectorIndex) -> bool:
        ids = index.ids()
        return len(ids) == len(self._entries) and set(ids.tolist()) == self._entries.keys()

    def _build_from_store(self) -> VectorIndex:
        ids, x = self._sql.live_vectors(self._db)
        return self.options.build(self.dim, ids, x)

    # -- writes -----------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the gallery is closed")

    def upsert(self, records: Sequence[GalleryRecord]) -> list[WriteResult]:
        check_records(records, self.dim)
        if not records:
            return []
        with self._write_lock:
            self._check_open()
            seq0 = self._seq
            changes: list[UpsertRow] = self._sql.commit(
                self._db, lambda db: self._sql.write_upserts(db, records, seq0))
            self._seq = changes[-1][3]
            self._apply(lambda: self._apply_upserts(changes))
            results = [WriteResult(r.id, not was_live, seq) for _, r, was_live, seq in changes]
        self._changed()
        return results

    def _apply_upserts(self, changes: list[UpsertRow]) -> None:
        self._index.remove(np.array([fid for fid, _, was_live, _ in changes if was_live], dtype=np.int64))
        self._index.add(np.array([fid for fid, *_ in changes], dtype=np.int64),
                        np.stack([r.embedding for _, r, _, _ in changes]))
        for fid, r, _, seq in changes:
            self._entries[fid] = Entry(r.id, r.camera, r.time, dump_metadata(r.metadata), seq)
            self._fids[r.id] = fid

    def _apply(self, change: Callable[[], None]) -> None:
        """Apply a committed change to the index (called with the write lock held)."""
        with self._index_lock, faiss_omp_threads(self.faiss_threads):
            try:
                change()
                self._applied_seq = self._seq
                return
            except Exception as exc:  # the store has the change: bring the index level with it
                log.error("applying a write to the FAISS index failed (%s); rebuilding the index from the store",
                          exc)
        with faiss_omp_threads(self.faiss_threads):
            index = self._build_from_store()
        entries, fids = self._sql.entries(self._db)
        with self._index_lock:
            self._index, self._entries, self._fids = index, entries, fids
            self._applied_seq = self._seq

    def delete(self, item_id: str) -> WriteResult | None:
        check_id(item_id)
        with self._write_lock:
            self._check_open()
            seq = self._seq + 1
            fid: int | None = self._sql.commit(self._db, lambda db: self._sql.write_delete(db, item_id, seq))
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
            assert fid is not None
            with self._read_lock:
                blob = self._sql.read_vector_blob(self._read_db, fid)
            if blob is None:  # deleted meanwhile
                return None
            vec = self._sql.vector(blob).copy()
        return StoredItem(entry.id, entry.camera, entry.time, load_metadata(entry.meta), entry.seq, vec)

    def existing(self, item_ids: Sequence[str]) -> set[str]:
        with self._index_lock:
            return {i for i in item_ids if i in self._fids}

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
        """Top-``ks[i]`` hits of row ``i`` passing ``flts[i]`` (:func:`.filtered_search.filtered_top_k`); called
        with the index lock held."""
        self._check_open()
        found = filtered_top_k(self._index, self._entries, q, ks, flts, self.faiss_threads)
        return [[Hit(e.id, s, e.camera, e.time, load_metadata(e.meta)) for s, e in row] for row in found]

    def count(self) -> int:
        """Items in the gallery (lock-free: ``len`` of a dict is atomic, so an event loop never waits here)."""
        return len(self._entries)

    def store_rows(self) -> int:
        """Live rows in SQLite, counted by SQL (independent of the in-memory maps)."""
        with self._read_lock:
            return self._sql.count_live(self._read_db)

    def stats(self) -> dict[str, Any]:
        with self._index_lock:
            index = self._index.describe()
            items, seq, applied = len(self._entries), self._seq, self._applied_seq
        index.update(training=self._training, train_error=self._train_error,
                     ivf_threshold=self.options.ivf_threshold if self.options.kind == "ivf" else None)
        return {
            "backend": self.kind, "items": items, "store_rows": self.store_rows(), "index": index, "seq": seq,
            "applied_seq": applied, "snapshot_seq": self._snapshot_seq if self._snapshot_seq >= 0 else None,
            "snapshot_age_s": round(time.time() - self._snapshot_time, 1) if self._snapshot_time else None,
            "data_dir": str(self.folder), "startup": dict(self.startup),
        }

    # -- snapshots and IVF training ---------------------------------------------------------------------------
    def snapshot(self) -> bool:
        """Write the index snapshot if the index changed since the last one; drop older tombstones. Snapshots are
        written one at a time, so an older one never replaces a newer one."""
        with self._snapshot_lock:
            written = self._write_snapshot()
        if written:
            self._maybe_train()  # HNSW: rebuild the graph when it holds too many tombstones
        return written

    def _write_snapshot(self) -> bool:
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
            header = index.snapshot_header(seq, self.model_id)
        size = write_snapshot_file(self.folder / SNAPSHOT_FILE, header, payload)
        self._snapshot_seq, self._snapshot_time = seq, time.time()
        # tombstones at or below the snapshot are no longer needed to replay -- unless an IVF index is being
        # trained from an older state and must catch up through them
        floor = seq if self._train_base is None else min(seq, self._train_base)
        with self._write_lock:
            if not self._closed:
                self._sql.drop_tombstones(self._db, floor)
        log.info("index snapshot at seq %d: %d vectors, %.1f MB in %.2f s", seq, header["ntotal"], size / 1e6,
                 time.perf_counter() - t0)
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
        if self.options.kind == "hnsw":
            if self._index.needs_rebuild():
                self._training = True
                threading.Thread(target=self._train, name="reidserve-hnsw-rebuild", daemon=True).start()
            return
        if self.options.kind != "ivf":
            return
        n = self.count()
        if self._index.kind == "flat":
            if n < self.options.ivf_threshold:
                return
        elif n < 4 * max(self._index.trained_n, 1):
            return
        self._training = True
        threading.Thread(target=self._train, name="reidserve-ivf-train", daemon=True).start()

    def _train(self) -> None:
        """Build the new index in the background (:meth:`_train_and_swap`), then snapshot it; each failure is
        logged as what it is, and only a failed build sets ``train_error``."""
        what = "HNSW graph rebuild" if self.options.kind == "hnsw" else "IVF training"
        try:
            try:
                swapped = self._train_and_swap()
            except Exception as exc:
                self._train_error = str(exc)
                log.error("%s failed, keeping the current index: %s", what, exc)
                return
            if not swapped:  # closed meanwhile
                return
            self._train_error = None
            try:
                self.snapshot()
            except Exception as exc:  # the new index serves; the next snapshot tries again
                log.error("index snapshot after the %s failed (the new index is in use; the next snapshot will "
                          "try again): %s", what, exc)
        finally:
            self._train_base = None
            self._training = False

    def _train_and_swap(self) -> bool:
        """Train an IVF index (or build an HNSW graph) on the store's vectors as of one sequence number (a read
        transaction on a connection of its own), then catch up with the writes made meanwhile and swap it in;
        False when the store was closed meanwhile."""
        t0 = time.perf_counter()
        db = self._sql.connect()
        try:
            db.execute("BEGIN")  # one consistent snapshot of the WAL database for the two reads
            base_seq = self._sql.read_seq(db)
            self._train_base = base_seq  # keep the tombstones above it until the new index caught up
            ids, x = self._sql.live_vectors(db)
            db.execute("COMMIT")
        finally:
            db.close()
        with faiss_omp_threads(self.faiss_threads):
            new = self.options.build(self.dim, ids, x, train=True)
        del x
        with self._write_lock:
            if self._closed:
                return False
            with self._read_lock, faiss_omp_threads(self.faiss_threads):
                replayed = self._sql.replay_into(new, self._read_db, base_seq)
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
        return True

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

