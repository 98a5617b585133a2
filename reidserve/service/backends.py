"""Open the gallery backend a store URL names (:func:`open_store`).

* ``sqlite`` (default): ``DATA_DIR/gallery.sqlite3`` plus a FAISS index snapshot (:mod:`.sqlite_store`);
* ``milvus-lite:///path/to/gallery.db``: an embedded Milvus Lite database (:mod:`.milvus_store`);
* ``milvus://host:19530[/collection]`` (or ``milvus+https://...``): a Milvus server.

A URL that is not understood, or a backend that cannot be opened as configured, raises
:class:`~.store.StoreError` with what to do instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .milvus_store import MilvusStore  # pymilvus itself is imported only when a Milvus store opens
from .sqlite_store import SqliteFaissStore
from .store import GalleryStore, StoreError

__all__ = ["StoreUrl", "open_store", "parse_store_url"]


@dataclass(frozen=True)
class StoreUrl:
    """A parsed ``--store`` value: ``scheme`` is ``sqlite``, ``milvus-lite`` or ``milvus``."""

    scheme: str
    target: str = ""  # the Milvus URI (file path for milvus-lite, http(s)://host:port for a server)
    collection: str = "reidserve_gallery"


def parse_store_url(url: str | None) -> StoreUrl:
    """``sqlite`` (or empty), ``milvus-lite:///abs/path.db`` / ``milvus-lite://rel/path.db``,
    ``milvus://host:port[/collection]`` or ``milvus+https://host:port[/collection]``."""
    if not url or url in ("sqlite", "sqlite://", "sqlite+faiss"):
        return StoreUrl("sqlite")
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "milvus-lite":
        path = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
        if not path or not path.endswith(".db"):
            raise StoreError(f"--store {url}: give the Milvus Lite database file, e.g. milvus-lite:///srv/gallery.db "
                             "(the name must end in .db)")
        return StoreUrl("milvus-lite", str(Path(path)))
    if scheme in ("milvus", "milvus+http", "milvus+https"):
        if not parsed.hostname:
            raise StoreError(f"--store {url}: give the Milvus server as milvus://HOST:PORT[/COLLECTION]")
        proto = "https" if scheme == "milvus+https" else "http"
        collection = parsed.path.strip("/") or "reidserve_gallery"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", collection):
            raise StoreError(f"--store {url}: the collection name {collection!r} must start with a letter or _ and "
                             "hold only letters, digits and _")
        return StoreUrl("milvus", f"{proto}://{parsed.hostname}:{parsed.port or 19530}", collection)
    raise StoreError(f"--store {url!r} is not understood; use sqlite, milvus-lite:///path/gallery.db or "
                     "milvus://host:19530[/collection]")


def open_store(url: str | None, data_dir: str | Path, dim: int, *, model_id: str = "",
               accept_model_change: bool = False, **options: Any) -> GalleryStore:
    """Open (create if needed) the gallery described by ``url``; ``options`` go to the SQLite + FAISS store
    (index kind, IVF settings, snapshot interval, GPU) and are ignored by Milvus, which indexes by itself.
    ``milvus_token`` (user:password or API key) is passed to a Milvus server."""
    spec = parse_store_url(url)
    token = options.pop("milvus_token", None)
    if spec.scheme == "sqlite":
        return SqliteFaissStore(data_dir, dim, model_id=model_id, accept_model_change=accept_model_change,
                                **options)
    return MilvusStore(spec.target, dim, collection=spec.collection, model_id=model_id,
                       accept_model_change=accept_model_change, token=token)
