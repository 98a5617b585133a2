"""A Milvus gallery (pymilvus ``MilvusClient``): a Milvus server, or Milvus Lite embedded in the process.

One collection (default ``reidserve_gallery``) with the fields ``id`` (VARCHAR primary key), ``vector``
(FLOAT_VECTOR, inner product, FLAT index), ``camera`` (nullable VARCHAR), ``ts`` (nullable DOUBLE), ``meta`` (JSON)
and ``seq`` (INT64: milliseconds since the epoch at the store's opening x 1000 plus the writes since, so it
increases across restarts on one clock; informational, Milvus orders writes itself). The model id and format
are kept in the collection's properties, so a gallery filled by another model is refused as with the SQLite
store. Reads use ``Strong`` consistency, so an acknowledged upsert is visible to the next search.

Filters become Milvus boolean expressions; camera and id values were validated against ``[A-Za-z0-9_.:-]`` before
they are quoted into one, so no user text reaches the expression unchecked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from .store import (
    GalleryRecord,
    Hit,
    SearchFilter,
    StoredItem,
    StoreError,
    WriteResult,
    check_id,
    check_queries,
    check_records,
)

log = logging.getLogger(__name__)

FORMAT = "reidserve.milvus/1"
_FIELDS = ["camera", "ts", "meta", "seq"]


def _quote(values: Collection[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in sorted(values)) + "]"


def filter_expression(flt: SearchFilter | None) -> str:
    """The Milvus boolean expression of ``flt`` ('' for no filter)."""
    if flt is None or flt.empty:
        return ""
    parts: list[str] = []
    if flt.cameras is not None:
        parts.append(f"camera in {_quote(flt.cameras)}" if flt.cameras else "false")
    if flt.exclude_cameras:
        parts.append(f"(camera is null or camera not in {_quote(flt.exclude_cameras)})")
    if flt.exclude_ids:
        parts.append(f"id not in {_quote(flt.exclude_ids)}")
    if flt.time_min is not None:
        parts.append(f"(ts is not null and ts >= {float(flt.time_min)!r})")
    if flt.time_max is not None:
        parts.append(f"(ts is not null and ts <= {float(flt.time_max)!r})")
    return " and ".join(parts)


class MilvusStore:
    """The Milvus :class:`~reidserve.service.store.GalleryStore`."""

    kind = "milvus"

    def __init__(self, uri: str, dim: int, *, collection: str = "reidserve_gallery", model_id: str = "",
                 accept_model_change: bool = False, token: str | None = None) -> None:
        try:
            from pymilvus import DataType, MilvusClient  # lazy: an optional, heavy dependency
        except ImportError as exc:
            raise StoreError("the Milvus store needs pymilvus (and milvus-lite for milvus-lite:// stores): "
                             "pip install 'pruneopt[milvus]'") from exc
        self.dim, self.uri, self.collection, self.model_id = int(dim), uri, collection, model_id
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        try:
            self.client = MilvusClient(uri=uri, token=token or "")
        except Exception as exc:
            raise StoreError(f"cannot connect to Milvus at {uri}: {_first_line(exc)}") from exc
        try:
            if not self.client.has_collection(collection):
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
                schema.add_field("camera", DataType.VARCHAR, max_length=64, nullable=True)
                schema.add_field("ts", DataType.DOUBLE, nullable=True)
                schema.add_field("meta", DataType.JSON)
                schema.add_field("seq", DataType.INT64)
                params = self.client.prepare_index_params()
                params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
                self.client.create_collection(collection, schema=schema, index_params=params,
                                              consistency_level="Strong")
                self.client.alter_collection_properties(collection, properties={
                    "reidserve.format": FORMAT, "reidserve.model": model_id, "reidserve.seq": "0"})
            else:
                self._check_existing(accept_model_change)
            self.client.load_collection(collection)
            self._seq = int(time.time() * 1000) * 1000
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"Milvus at {uri}: cannot open collection {collection!r}: {_first_line(exc)}") from exc

    def _check_existing(self, accept_model_change: bool) -> None:
        desc = self.client.describe_collection(self.collection)
        props = desc.get("properties") or {}
        if props.get("reidserve.format") != FORMAT:
            raise StoreError(f"Milvus collection {self.collection!r} was not created by reidserve; give another "
                             "collection name in --store milvus://HOST:PORT/COLLECTION")
        vec = next((f for f in desc["fields"] if f["name"] == "vector"), None)
        have = int((vec or {}).get("params", {}).get("dim", -1))
        if have != self.dim:
            raise StoreError(f"Milvus collection {self.collection!r} holds {have}-dimensional embeddings but the "
                             f"model outputs {self.dim}: use another collection for this model")
        stored = props.get("reidserve.model", "")
        if self.model_id and stored and stored != self.model_id:
            if not accept_model_change:
                raise StoreError(f"Milvus collection {self.collection!r} was filled by another model; embeddings "
                                 "of different models are not comparable: use another collection, or pass "
                                 "--accept-model-change if the new model produces the same embeddings")
            self.client.alter_collection_properties(self.collection, properties={"reidserve.model": self.model_id})

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the gallery is closed")

    # -- writes -----------------------------------------------------------------------------------------------
    def upsert(self, records: Sequence[GalleryRecord]) -> list[WriteResult]:
        check_records(records, self.dim)
        if not records:
            return []
        with self._lock:
            self._check_open()
            ids = [r.id for r in records]
            existing = {row["id"] for row in self.client.get(self.collection, ids=ids, output_fields=["id"])}
            rows, results = [], []
            for r in records:
                self._seq += 1
                rows.append({"id": r.id, "vector": r.embedding.astype(np.float32).tolist(), "camera": r.camera,
                             "ts": r.time, "meta": dict(r.metadata), "seq": self._seq})
                results.append(WriteResult(r.id, r.id not in existing, self._seq))
            try:
                self.client.upsert(self.collection, rows)
            except Exception as exc:
                raise StoreError(f"Milvus upsert failed: {_first_line(exc)}") from exc
        return results

    def delete(self, item_id: str) -> WriteResult | None:
        check_id(item_id)
        with self._lock:
            self._check_open()
            if not self.client.get(self.collection, ids=[item_id], output_fields=["id"]):
                return None
            self.client.delete(self.collection, ids=[item_id])
            self._seq += 1
            return WriteResult(item_id, False, self._seq)

    # -- reads ------------------------------------------------------------------------------------------------
    def get(self, item_id: str, with_embedding: bool = False) -> StoredItem | None:
        check_id(item_id)
        self._check_open()
        fields = _FIELDS + (["vector"] if with_embedding else [])
        rows = self.client.get(self.collection, ids=[item_id], output_fields=fields)
        if not rows:
            return None
        row = rows[0]
        vec = np.asarray(row["vector"], dtype=np.float32) if with_embedding else None
        return StoredItem(row["id"], row.get("camera"), row.get("ts"), dict(row.get("meta") or {}), row.get("seq"),
                          vec)

    def existing(self, item_ids: Sequence[str]) -> set[str]:
        for i in item_ids:
            check_id(i)
        self._check_open()
        if not item_ids:
            return set()
        return {row["id"] for row in self.client.get(self.collection, ids=list(item_ids), output_fields=["id"])}

    def search(self, queries: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[list[Hit]]:
        q = check_queries(queries, self.dim, k)
        self._check_open()
        if self.count() == 0:
            return [[] for _ in range(len(q))]
        res = self.client.search(self.collection, data=q.tolist(), limit=min(int(k), 16384),
                                 filter=filter_expression(flt), output_fields=["camera", "ts", "meta"],
                                 search_params={"metric_type": "IP"})
        return [[Hit(h["id"], float(h["distance"]), h["entity"].get("camera"), h["entity"].get("ts"),
                     dict(h["entity"].get("meta") or {})) for h in row] for row in res]

    def count(self) -> int:
        self._check_open()
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def stats(self) -> dict[str, Any]:
        n = self.count()
        return {"backend": self.kind, "items": n, "store_rows": n, "uri": self.uri, "collection": self.collection,
                "index": {"kind": "milvus-flat", "ntotal": n, "exact": True, "gpu": False}}

    def snapshot(self) -> bool:
        """Ask Milvus to seal and persist its growing segments."""
        with self._lock:
            if self._closed:
                return False
            self.client.flush(self.collection)
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self.client.flush(self.collection)
            except Exception as exc:  # closing anyway
                log.warning("Milvus flush on close failed: %s", _first_line(exc))
            self.client.close()
            self._closed = True

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
