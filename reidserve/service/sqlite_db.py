"""The SQLite side of the SQLite + FAISS gallery (:class:`GalleryDatabase`): schema, connections, the ``info``
table, write transactions and row reads. The store (:mod:`.sqlite_store`) owns the connections' use (locks) and
keeps the FAISS index level with what is written here.

``gallery.sqlite3`` holds ``items`` (id, int64 FAISS id ``fid``, sequence number, tombstone flag, camera, time,
metadata JSON, float32 vector) and ``info`` (format, dimension, model id, the last sequence number, creation time).
Connections run in WAL mode with ``synchronous=FULL``: a committed write survives a crash of the process or the
machine. The database is created readable by its owner only (mode 0600, like the token file); SQLite gives its
``-wal`` and ``-shm`` files the database's mode.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .faiss_index import VectorIndex
from .store import GalleryRecord, StoreError, dump_metadata

__all__ = ["DB_FILE", "PRIVATE", "STORE_FORMAT", "Entry", "GalleryDatabase", "UpsertRow", "make_private"]

log = logging.getLogger(__name__)

DB_FILE = "gallery.sqlite3"
STORE_FORMAT = "reidserve.gallery/1"
PRIVATE = 0o600  # the mode of every file of a gallery

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


def make_private(path: Path) -> None:
    """Create ``path`` (empty) readable and writable by its owner only, or take the group's and others' access
    away from an existing file (galleries created before files were private)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            try:
                os.chmod(path, mode & 0o700)
            except OSError as exc:  # e.g. owned by another user: serve it, but say so
                log.warning("%s is readable by others (mode %o) and cannot be made private: %s", path, mode, exc)
        return
    os.close(fd)


@dataclass
class Entry:
    """What the store keeps in memory of a live item (everything but its vector)."""

    id: str
    camera: str | None
    time: float | None
    meta: str | None
    seq: int


# one upserted row: (fid, the record, whether the id was live before, its sequence number)
UpsertRow = tuple[int, GalleryRecord, bool, int]


class GalleryDatabase:
    """The SQL of the gallery in ``folder`` for ``dim``-dimensional vectors (see the module docstring)."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = folder
        self.dim = int(dim)
        self.path = folder / DB_FILE

    def connect(self) -> sqlite3.Connection:
        """A new connection (WAL, ``synchronous=FULL``), creating the (private) file and the schema if needed."""
        try:
            make_private(self.path)
            for suffix in ("-wal", "-shm"):
                if self.path.with_name(self.path.name + suffix).exists():
                    make_private(self.path.with_name(self.path.name + suffix))
        except OSError as exc:
            raise StoreError(f"{self.path} cannot be created ({exc.strerror or exc}); check the permissions of "
                             f"{self.folder} or give another --data-dir") from exc
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} cannot be opened as a gallery database ({exc}); move it away or give "
                             "another --data-dir") from exc
        return db

    def init_info(self, db: sqlite3.Connection, model_id: str, accept_model_change: bool) -> int:
        """Write the ``info`` table of a new gallery, or check an existing one against this dimension and model;
        returns the last sequence number."""
        info = dict(db.execute("SELECT key, value FROM info").fetchall())
        if not info:
            db.executemany("INSERT INTO info (key, value) VALUES (?, ?)", [
                ("format", STORE_FORMAT), ("dim", str(self.dim)), ("model", model_id), ("seq", "0"),
                ("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))])
            return 0
        if info.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.path} is not a reidserve gallery (format {info.get('format')!r})")
        if int(info.get("dim", -1)) != self.dim:
            raise StoreError(f"{self.folder} holds {info.get('dim')}-dimensional embeddings but the model outputs "
                             f"{self.dim}: give a new --data-dir for this model")
        stored_model = info.get("model", "")
        if model_id and stored_model and stored_model != model_id:
            if not accept_model_change:
                raise StoreError(f"{self.folder} was filled by another model ({stored_model[:16]}..., this one is "
                                 f"{model_id[:16]}...); embeddings of different models are not comparable: "
                                 "give a new --data-dir, or pass --accept-model-change if the new model produces "
                                 "the same embeddings")
            db.execute("UPDATE info SET value = ? WHERE key = 'model'", (model_id,))
            log.warning("gallery %s: the model changed (%s -> %s), accepted", self.folder, stored_model[:16],
                        model_id[:16])
        return int(info.get("seq", "0"))

    # -- reads ------------------------------------------------------------------------------------------------
    @staticmethod
    def rows(db: sqlite3.Connection, sql: str, args: tuple[Any, ...] = (),
             chunk: int = 8192) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of a query, ``chunk`` at a time."""
        cur = db.execute(sql, args)
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            yield rows

    def vector(self, blob: bytes) -> np.ndarray:
        """A stored vector (a read-only view of ``blob``)."""
        v = np.frombuffer(blob, dtype=np.float32)
        if v.shape != (self.dim,):
            raise StoreError(f"{self.path}: a stored vector has {v.size} values, not {self.dim}; the database is "
                             "corrupted")
        return v

    def live_vectors(self, db: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
        """``(fids, vectors)`` of every live item."""
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        for rows in self.rows(db, "SELECT fid, vec FROM items WHERE deleted = 0"):
            ids.extend(r[0] for r in rows)
            vecs.extend(self.vector(r[1]) for r in rows)
        x = np.stack(vecs) if vecs else np.zeros((0, self.dim), np.float32)
        return np.asarray(ids, dtype=np.int64), x

    def entries(self, db: sqlite3.Connection) -> tuple[dict[int, Entry], dict[str, int]]:
        """The live items as ``{fid: Entry}`` and ``{id: fid}``."""
        entries: dict[int, Entry] = {}
        fids: dict[str, int] = {}
        for rows in self.rows(db, "SELECT fid, id, camera, ts, meta, seq FROM items WHERE deleted = 0"):
            for fid, item_id, camera, ts, meta, seq in rows:
                entries[fid] = Entry(item_id, camera, ts, meta, seq)
                fids[item_id] = fid
        return entries, fids

    def changes_after(self, db: sqlite3.Connection, seq: int) -> Iterator[list[tuple[Any, ...]]]:
        """``(fid, deleted, vec)`` of every row written after sequence number ``seq``, in write order."""
        return self.rows(db, "SELECT fid, deleted, vec FROM items WHERE seq > ? ORDER BY seq", (seq,))

    def replay_into(self, index: VectorIndex, db: sqlite3.Connection, after_seq: int) -> int:
        """Apply every row written after ``after_seq`` to ``index`` (tombstones remove, live rows replace);
        returns how many rows."""
        n = 0
        present = set(index.ids().tolist())
        for rows in self.changes_after(db, after_seq):
            drop = np.array([r[0] for r in rows if r[0] in present], dtype=np.int64)
            index.remove(drop)
            present.difference_update(drop.tolist())
            live = [(r[0], r[2]) for r in rows if not r[1]]
            if live:
                ids = np.array([fid for fid, _ in live], dtype=np.int64)
                index.add(ids, np.stack([self.vector(blob) for _, blob in live]))
                present.update(ids.tolist())
            n += len(rows)
        return n

    @staticmethod
    def count_live(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COUNT(*) FROM items WHERE deleted = 0").fetchone()[0])

    @staticmethod
    def read_vector_blob(db: sqlite3.Connection, fid: int) -> bytes | None:
        row = db.execute("SELECT vec FROM items WHERE fid = ? AND deleted = 0", (fid,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def read_seq(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT value FROM info WHERE key = 'seq'").fetchone()[0])

    # -- writes -----------------------------------------------------------------------------------------------
    def commit(self, db: sqlite3.Connection, body: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``body(db)`` in one ``BEGIN IMMEDIATE ... COMMIT`` transaction (rolled back if it raises)."""
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

    @staticmethod
    def write_upserts(db: sqlite3.Connection, records: Sequence[GalleryRecord], seq0: int) -> list[UpsertRow]:
        """Insert or replace ``records`` with sequence numbers after ``seq0`` (inside :meth:`commit`)."""
        out: list[UpsertRow] = []
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

    @staticmethod
    def write_delete(db: sqlite3.Connection, item_id: str, seq: int) -> int | None:
        """Turn the live row of ``item_id`` into a tombstone at ``seq`` (inside :meth:`commit`); its fid, or None
        when there is no such item."""
        row = db.execute("SELECT fid FROM items WHERE id = ? AND deleted = 0", (item_id,)).fetchone()
        if row is None:
            return None
        db.execute("UPDATE items SET deleted = 1, seq = ?, vec = NULL, meta = NULL, camera = NULL, "
                   "ts = NULL WHERE fid = ?", (seq, row[0]))
        db.execute("UPDATE info SET value = ? WHERE key = 'seq'", (str(seq),))
        return int(row[0])

    @staticmethod
    def drop_tombstones(db: sqlite3.Connection, floor: int) -> None:
        """Delete the tombstones at or below sequence number ``floor`` (no longer needed to replay)."""
        db.execute("DELETE FROM items WHERE deleted = 1 AND seq <= ?", (floor,))
