"""The results store of a search run: one SQLite file per run (``runs/NAME/search.db``), in WAL mode.

It holds the run's config, one row per candidate subnetwork (space, regime, spec, FLOPs, params, R, status,
error, latency, wall time, worker, message; the ``space`` is the population: ``initial``, ``refined``, or ``noise``
for the re-evaluations of a few initial specs with extra seeds, :meth:`Store.noise_floor`), an append-only log of
finished evaluations, and the results of the run's finished stages (parent, analysis, winner, final numbers), so
that a report can be re-rendered from the database alone.

A run folder keeps the config it was created with: re-running with other options is refused while any candidate
has finished (its results belong to that config), but a folder in which none has may be re-used -- the store then
takes the new config, forgets the old run's stages and queued candidates, and says so (:attr:`Store.reused`).

Crash safety: every state change is one transaction. A run killed at any moment (even with SIGKILL) leaves a
consistent database; on reopening, candidates left ``running`` go back to ``queued`` and finished ones are never
evaluated again. Only one process drives a run at a time (an exclusive lock on ``runs/NAME/.lock``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common.files import ExclusiveLock, LockBusy
from .errors import PruneoptError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    space TEXT NOT NULL,
    regime REAL NOT NULL,
    idx INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    spec TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    macs INTEGER NOT NULL,
    params INTEGER NOT NULL,
    ratio REAL NOT NULL,
    flops_fraction REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    error REAL,
    latency_b1_ms REAL,
    latency_bn_ms REAL,
    wall_s REAL,
    worker TEXT,
    message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at REAL,
    UNIQUE (space, regime, idx)
);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates (status);
CREATE TABLE IF NOT EXISTS evaluations (
    candidate_id INTEGER NOT NULL REFERENCES candidates (id),
    error REAL NOT NULL,
    worker TEXT,
    wall_s REAL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stages (name TEXT PRIMARY KEY, payload TEXT NOT NULL, finished_at REAL NOT NULL);
"""


class RunConfigMismatch(PruneoptError):
    """The run folder was created with a different config."""


class RunInUse(PruneoptError):
    """Another process is driving this run."""


@dataclass(frozen=True)
class CandidateJob:
    """One candidate to evaluate: what a worker needs, and nothing from the database."""

    candidate_id: int
    spec_json: str
    seed: int


class Store:
    """Results of one run; see the module docstring. Use :meth:`open` (a context manager) to get one."""

    def __init__(self, path: Path, max_attempts: int = 3) -> None:
        self.path = path
        self.max_attempts = max_attempts
        self.reused: str | None = None  # "key: old -> new, ..." when a run with nothing finished took a new config
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.transaction():
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)

    # -- lifecycle ---------------------------------------------------------------------------------------
    @classmethod
    @contextmanager
    def open(cls, run_dir: str | Path, config: dict[str, Any] | None, *, readonly: bool = False,
             max_attempts: int = 3) -> Iterator[Store]:
        """Open (creating if needed) the store of ``run_dir``.

        With ``config``, a new run records it and an existing run must have been created with the same one
        (:class:`RunConfigMismatch` otherwise), unless none of its candidates has finished: then it starts afresh
        with ``config`` (:attr:`reused` says what changed). Unless ``readonly``, takes the run's exclusive lock
        (:class:`RunInUse` if another process holds it) and requeues candidates a crash left ``running``.
        """
        root = Path(run_dir)
        db_path = root / "search.db"
        if readonly:
            if not db_path.is_file():
                raise PruneoptError(f"{root} is not a search run (no search.db)")
        else:
            root.mkdir(parents=True, exist_ok=True)
        lock = None if readonly else _lock(root)
        store = cls(db_path, max_attempts)
        try:
            if config is not None:
                store._check_config(config)
            if not readonly:
                store.requeue_running()
            yield store
        finally:
            store.db.close()
            if lock is not None:
                lock.release()

    def _check_config(self, config: dict[str, Any]) -> None:
        text = json.dumps(config, sort_keys=True)
        with self.transaction():
            row = self.db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('config', ?)", (text,))
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                return
        old = json.loads(row["value"])
        if old == json.loads(text):
            return
        keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in keys[:4])
        with self.transaction():
            done = self.db.execute("SELECT COUNT(*) FROM candidates WHERE status = 'done'").fetchone()[0]
            if done == 0:  # nothing the old config produced is kept: take the new one
                for table in ("evaluations", "candidates", "stages"):
                    self.db.execute(f"DELETE FROM {table}")
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (text,))
                self.reused = diffs
                return
        raise RunConfigMismatch(
            f"{self.path.parent} was created with a different config ({diffs}) and {done} of its candidates have "
            "finished; use a new --out folder, or repeat the original options to resume"
        )

    def config(self) -> dict[str, Any]:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        if row is None:
            raise PruneoptError(f"{self.path} holds no run config")
        return json.loads(row["value"])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- candidates --------------------------------------------------------------------------------------
    def add_candidates(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert candidates (keys: space, regime, idx, seed, spec, spec_hash, macs, params, ratio,
        flops_fraction); ones already present are left alone. Returns how many were new."""
        cols = ("space", "regime", "idx", "seed", "spec", "spec_hash", "macs", "params", "ratio", "flops_fraction")
        with self.transaction():
            before = self.db.total_changes
            self.db.executemany(
                f"INSERT OR IGNORE INTO candidates ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [tuple(r[c] for c in cols) for r in rows],
            )
            return self.db.total_changes - before

    def requeue_running(self) -> int:
        with self.transaction():
            return self.db.execute("UPDATE candidates SET status = 'queued' WHERE status = 'running'").rowcount

    def pending(self, space: str | None = None, regime: float | None = None) -> list[CandidateJob]:
        """Candidates still to evaluate: queued ones, and failed ones with attempts left, in id order."""
        sql = ("SELECT id, spec, seed FROM candidates WHERE (status = 'queued' OR (status = 'failed' AND "
               "attempts < ?))")
        args: list[Any] = [self.max_attempts]
        sql, args = _filter(sql, args, space, regime)
        return [CandidateJob(r["id"], r["spec"], r["seed"]) for r in self.db.execute(sql + " ORDER BY id", args)]

    def mark_running(self, candidate_id: int, worker: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE candidates SET status = 'running', worker = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE id = ?", (worker, time.time(), candidate_id))

    def finish(self, candidate_id: int, error: float, wall_s: float, worker: str,
               latency_b1_ms: float | None = None, latency_bn_ms: float | None = None) -> None:
        now = time.time()
        with self.transaction():
            self.db.execute(
                "UPDATE candidates SET status = 'done', error = ?, wall_s = ?, worker = ?, latency_b1_ms = ?, "
                "latency_bn_ms = ?, message = NULL, updated_at = ? WHERE id = ?",
                (error, wall_s, worker, latency_b1_ms, latency_bn_ms, now, candidate_id))
            self.db.execute("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?)",
                            (candidate_id, error, worker, wall_s, now))

    def fail(self, candidate_id: int, message: str, worker: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE candidates SET status = 'failed', message = ?, worker = ?, updated_at = ? WHERE id = ?",
                (message[:2000], worker, time.time(), candidate_id))

    def rows(self, space: str | None = None, regime: float | None = None, status: str | None = "done"
             ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM candidates WHERE 1 = 1", []
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql, args = _filter(sql, args, space, regime)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def noise_floor(self, regime: float) -> list[tuple[str, int, float]]:
        """The finished evaluations of the noise-floor population (``noise``) of ``regime``: ``(spec_hash, seed,
        error)`` per spec and extra seed, in id order (the specs' own initial evaluations are not included)."""
        return [(r["spec_hash"], r["seed"], r["error"]) for r in self.rows("noise", regime)]

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT status, COUNT(*) FROM candidates GROUP BY status")}

    def evaluation_counts(self) -> dict[int, int]:
        """How many times each candidate finished an evaluation (1 for every done candidate in a sound run)."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT candidate_id, COUNT(*) FROM evaluations GROUP BY candidate_id")}

    # -- stages ------------------------------------------------------------------------------------------
    def set_stage(self, name: str, payload: dict[str, Any]) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?)", (name, json.dumps(payload), time.time()))

    def stage(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT payload FROM stages WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row["payload"])

    def stages(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: json.loads(r["payload"]) for r in self.db.execute("SELECT * FROM stages ORDER BY name")}


def _filter(sql: str, args: list[Any], space: str | None, regime: float | None) -> tuple[str, list[Any]]:
    if space is not None:
        sql += " AND space = ?"
        args.append(space)
    if regime is not None:
        sql += " AND abs(regime - ?) < 1e-9"
        args.append(regime)
    return sql, args


def _lock(root: Path) -> ExclusiveLock:
    """The run's exclusive lock (``root/.lock``, naming its holder); :class:`RunInUse` while another holds it."""
    try:
        return ExclusiveLock(root / ".lock")
    except LockBusy as exc:
        raise RunInUse(f"{root} is being run by {exc.holder or 'another process'}; wait for it to finish or stop "
                       "it") from None
