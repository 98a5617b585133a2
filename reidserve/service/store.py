"""The gallery store interface shared by the SQLite + FAISS and the Milvus backends.

A gallery holds *items*: a string id, one L2-normalised ``float32`` embedding, and metadata (camera, time and a
small flat dict). :class:`GalleryStore` is what the service needs from a backend: upsert by id, get, delete,
top-k inner-product search with metadata filters, count, stats, snapshot and close. The backends are
:mod:`.sqlite_store` (SQLite + FAISS, the default) and :mod:`.milvus_store`; :func:`.backends.open_store` picks one
from a store URL.

Every check a user can fail (a malformed id, an embedding of the wrong dimension, a non-finite or all-zero
vector, an oversized metadata dict) raises :class:`GalleryError` (a ``ValueError``; the service answers 422).
A store that cannot be opened as configured raises :class:`StoreError` with what to do instead.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ReidserveError

__all__ = [
    "CAMERA_RE",
    "GalleryError",
    "GalleryRecord",
    "GalleryStore",
    "Hit",
    "ID_RE",
    "META_KEY_RE",
    "SearchFilter",
    "StoreError",
    "StoredItem",
    "WriteResult",
    "check_camera",
    "check_id",
    "check_metadata",
    "normalize_embedding",
]

ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
CAMERA_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
META_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_META_KEYS = 32
MAX_META_STR = 1024
INT64_MAX = 2**63 - 1


class GalleryError(ReidserveError):
    """A request the gallery cannot accept (bad id, embedding, metadata); the message says what to change."""


class StoreError(ReidserveError, RuntimeError):
    """The store cannot be opened as configured (wrong dimension or model, locked, unreachable, ...) or cannot be
    written (disk full, permissions); the message says what to do. A ``RuntimeError`` too, as it was before it
    became a :class:`ReidserveError`."""


def check_id(item_id: Any, what: str = "id") -> str:
    """``item_id`` if it is a string of 1-128 characters from ``A-Z a-z 0-9 _ . : -`` other than ``.`` and ``..``
    (which no URL path can carry: HTTP clients resolve them as this folder and the parent folder)."""
    if not isinstance(item_id, str) or not ID_RE.fullmatch(item_id):
        raise GalleryError(f"{what} {item_id!r} is not allowed: use 1-128 characters from A-Z a-z 0-9 _ . : -")
    if item_id in (".", ".."):
        raise GalleryError(f"{what} {item_id!r} is not allowed: a URL path cannot carry it (choose another id)")
    return item_id


def check_camera(camera: Any) -> str | None:
    """``camera`` (None, or 1-64 characters from ``A-Z a-z 0-9 _ . : -``)."""
    if camera is None:
        return None
    if not isinstance(camera, str) or not CAMERA_RE.fullmatch(camera):
        raise GalleryError(f"camera {camera!r} is not allowed: use 1-64 characters from A-Z a-z 0-9 _ . : -")
    return camera


def check_time(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise GalleryError(f"time must be a finite number (seconds since the epoch), got {value!r}")
    return float(value)


def check_metadata(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """A flat dict of at most 32 keys (``[A-Za-z0-9_.-]{1,64}``) to None, bool, int64, finite float or a string
    of at most 1024 characters."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise GalleryError(f"metadata must be an object of key -> value, got {type(meta).__name__}")
    if len(meta) > MAX_META_KEYS:
        raise GalleryError(f"metadata has {len(meta)} keys; at most {MAX_META_KEYS} are allowed")
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not META_KEY_RE.fullmatch(key):
            raise GalleryError(f"metadata key {key!r} is not allowed: use 1-64 characters from A-Z a-z 0-9 _ . -")
        if value is None or isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not -INT64_MAX - 1 <= value <= INT64_MAX:
                raise GalleryError(f"metadata {key!r}: integer {value} does not fit in 64 bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise GalleryError(f"metadata {key!r}: numbers must be finite, got {value!r}")
        elif isinstance(value, str):
            if len(value) > MAX_META_STR:
                raise GalleryError(f"metadata {key!r}: strings are limited to {MAX_META_STR} characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise GalleryError(f"metadata {key!r}: the string is not valid Unicode (lone surrogate)") from None
        else:
            raise GalleryError(f"metadata {key!r}: values must be strings, numbers, booleans or null, got "
                               f"{type(value).__name__}")
        out[key] = value
    return out


def normalize_embedding(vector: Any, dim: int, what: str = "embedding") -> np.ndarray:
    """``vector`` as an L2-normalised ``float32`` array of length ``dim``; raises :class:`GalleryError` for a
    wrong length, non-finite values or a zero vector."""
    try:
        v = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise GalleryError(f"{what} must be a list of {dim} numbers") from None
    if v.ndim != 1 or v.shape[0] != dim:
        raise GalleryError(f"{what} has {v.shape[0] if v.ndim == 1 else list(v.shape)} values; this gallery holds "
                           f"{dim}-dimensional embeddings (the model's output size)")
    if not np.isfinite(v).all():
        raise GalleryError(f"{what} holds NaN or infinite values")
    norm = math.sqrt(float(np.square(v).sum()))  # not np.linalg.norm: BLAS threads cost more than a small vector
    if norm == 0.0 or not math.isfinite(norm):
        raise GalleryError(f"{what} is all zeros (or overflows); it cannot be normalised")
    return (v / norm).astype(np.float32)


@dataclass(frozen=True)
class GalleryRecord:
    """One item to upsert: its id, an L2-normalised embedding and metadata."""

    id: str
    embedding: np.ndarray
    camera: str | None = None
    time: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredItem:
    """An item read back from the store (``embedding`` only when asked for)."""

    id: str
    camera: str | None
    time: float | None
    metadata: dict[str, Any]
    seq: int | None
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class WriteResult:
    """The outcome of one write: ``created`` is False when an existing id was replaced; ``seq`` is the store's
    sequence number of the write (None where the backend has none)."""

    id: str
    created: bool
    seq: int | None


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its inner product with the query (cosine similarity) and metadata."""

    id: str
    score: float
    camera: str | None
    time: float | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SearchFilter:
    """Which items a search may return: only ``cameras`` (when given), none of ``exclude_cameras`` nor
    ``exclude_ids``, and a time inside ``[time_min, time_max]`` (items without a time fail a time bound)."""

    cameras: frozenset[str] | None = None
    exclude_cameras: frozenset[str] = frozenset()
    time_min: float | None = None
    time_max: float | None = None
    exclude_ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for c in (*(self.cameras or ()), *self.exclude_cameras):
            check_camera(c)
        for i in self.exclude_ids:
            check_id(i, "exclude_ids entry")
        for t in (self.time_min, self.time_max):
            check_time(t)
        if self.time_min is not None and self.time_max is not None and self.time_min > self.time_max:
            raise GalleryError(f"time_min {self.time_min} is after time_max {self.time_max}")

    @property
    def empty(self) -> bool:
        return (self.cameras is None and not self.exclude_cameras and self.time_min is None
                and self.time_max is None and not self.exclude_ids)

    def matches(self, item_id: str, camera: str | None, time: float | None) -> bool:
        if self.cameras is not None and camera not in self.cameras:
            return False
        if camera is not None and camera in self.exclude_cameras:
            return False
        if item_id in self.exclude_ids:
            return False
        if self.time_min is not None and (time is None or time < self.time_min):
            return False
        return not (self.time_max is not None and (time is None or time > self.time_max))


@runtime_checkable
class GalleryStore(Protocol):
    """What the service needs from a gallery backend. Methods block; call them from a worker thread."""

    kind: str
    dim: int

    def upsert(self, records: Sequence[GalleryRecord]) -> list[WriteResult]:
        """Add or replace ``records`` (ids unique within the call), durably, before returning."""
        ...

    def get(self, item_id: str, with_embedding: bool = False) -> StoredItem | None: ...

    def existing(self, item_ids: Sequence[str]) -> set[str]:
        """The ids of ``item_ids`` that are in the gallery."""
        ...

    def delete(self, item_id: str) -> WriteResult | None:
        """Remove ``item_id``; None when it is not in the gallery."""
        ...

    def search(self, queries: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[list[Hit]]:
        """Top-``k`` items by inner product for each row of ``queries`` (``[nq, dim]``, L2-normalised)."""
        ...

    def count(self) -> int: ...

    def stats(self) -> dict[str, Any]: ...

    def snapshot(self) -> bool:
        """Persist what can speed up the next start (the FAISS index); True when something was written."""
        ...

    def close(self) -> None: ...


def check_records(records: Sequence[GalleryRecord], dim: int) -> None:
    """Validate a batch of records (ids unique and well formed, embeddings of ``dim`` finite values)."""
    seen: set[str] = set()
    for r in records:
        check_id(r.id)
        if r.id in seen:
            raise GalleryError(f"id {r.id!r} appears twice in one request; send each id once")
        seen.add(r.id)
        emb = np.asarray(r.embedding)
        if emb.shape != (dim,) or emb.dtype != np.float32 or not np.isfinite(emb).all():
            raise GalleryError(f"item {r.id!r}: the embedding must be {dim} finite float32 values")
        check_camera(r.camera)
        check_time(r.time)
        check_metadata(r.metadata)


def check_queries(queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise GalleryError(f"queries must be [n, {dim}], got {list(q.shape)}")
    if not np.isfinite(q).all():
        raise GalleryError("a query embedding holds NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise GalleryError(f"k must be a positive integer, got {k!r}")
    return q


def dump_metadata(meta: Mapping[str, Any]) -> str:
    return json.dumps(dict(meta), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def load_metadata(text: str | None) -> dict[str, Any]:
    return dict(json.loads(text)) if text else {}
