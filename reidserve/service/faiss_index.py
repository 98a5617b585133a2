"""The FAISS side of the SQLite + FAISS gallery: an ID-mapped inner-product index and its snapshot file.

:class:`VectorIndex` wraps ``IndexIDMap2(IndexFlatIP)`` (exact) or an ``IndexIVFFlat`` (approximate, for large
galleries; IVF indexes store the int64 ids themselves), optionally on a GPU when FAISS was built with GPU
support. It is *not* thread-safe: FAISS allows no mutation concurrent with a search, so the store holds one lock
around every call.

A snapshot is one file written atomically (temporary file, fsync, rename, fsync of the folder)::

    b"RSIDX\\x00\\x01\\n" | header length (4 bytes, little endian) | header JSON | faiss.serialize_index bytes |
    SHA-256 of header + index bytes

The header holds the store sequence number the index reflects, the dimension, the index kind and the model id,
so that a start can check the file, load it, and replay only the rows written after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger("reidserve.service")

MAGIC = b"RSIDX\x00\x01\n"
SNAPSHOT_FORMAT = "reidserve.index/1"
INDEX_KINDS = ("flat", "ivf")


class SnapshotError(ValueError):
    """A snapshot file that is missing, truncated, corrupted or written for another gallery."""


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def choose_nlist(n: int) -> int:
    """About 4 sqrt(n) inverted lists with at least 39 training vectors each (FAISS's minimum): a power of two
    in [16, 16384]."""
    target = min(4.0 * math.sqrt(max(n, 1)), max(n, 1) / 39.0)
    return int(min(16384, max(16, 2 ** math.floor(math.log2(max(target, 1.0))))))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/16 of them, at least 16 (recall@10 0.94 at about 2 ms per query on 100,000
    synthetic 512-d embeddings of re-ID-like structure, 1024 lists; see bench/load.py)."""
    return int(min(nlist, max(16, nlist // 16)))


class VectorIndex:
    """An ID-mapped inner-product FAISS index (flat or IVF), on the CPU or a GPU."""

    def __init__(self, dim: int, kind: str = "flat", *, nlist: int = 0, nprobe: int = 0, use_gpu: bool = False,
                 index: Any = None, trained_n: int = 0) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose flat or ivf")
        self.dim, self.kind = dim, kind
        self.nlist = nlist if kind == "ivf" else 0
        self.nprobe = nprobe or (default_nprobe(nlist) if kind == "ivf" else 0)
        self.gpu = False
        self._res: Any = None
        self.trained_n = int(trained_n)  # IVF: how many vectors the index was trained for
        if index is None:
            if kind == "ivf":
                raise ValueError("an IVF index is made by VectorIndex.train_ivf")
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.index = index
        self._set_nprobe()
        if use_gpu:
            self._to_gpu()

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def train_ivf(cls, dim: int, vectors: np.ndarray, ids: np.ndarray, *, nlist: int = 0, nprobe: int = 0,
                  use_gpu: bool = False, seed: int = 0) -> VectorIndex:
        """An IVF index trained on (a sample of) ``vectors`` holding all of them."""
        n = int(vectors.shape[0])
        nlist = nlist or choose_nlist(n)
        if n < nlist:
            raise ValueError(f"IVF with {nlist} lists needs at least {nlist} vectors to train, got {n}")
        # IVF indexes map ids themselves (an IndexIDMap2 around one would go wrong on remove_ids)
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors if n <= 64 * nlist else vectors[np.sort(rng.choice(n, 64 * nlist, replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        out = cls(dim, "ivf", nlist=nlist, nprobe=nprobe, index=index, trained_n=n)
        out.add(ids, vectors)
        if use_gpu:
            out._to_gpu()
        return out

    def _set_nprobe(self) -> None:
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = self.nprobe

    def _to_gpu(self) -> None:
        """Move the index to GPU 0; stays on the CPU (with a warning) when that fails."""
        if not gpu_available():
            return
        try:
            self._res = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._res, 0, self.index)
            self.gpu = True
        except Exception as exc:  # FAISS raises RuntimeError for unsupported GPU index types
            log.warning("FAISS GPU index unavailable (%s); searching on the CPU", exc)
            self._res, self.gpu = None, False

    def cpu_index(self) -> Any:
        return faiss.index_gpu_to_cpu(self.index) if self.gpu else self.index

    # -- data -----------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                    np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        sel = np.ascontiguousarray(ids, dtype=np.int64)
        try:
            self.index.remove_ids(sel)
        except RuntimeError:
            if not self.gpu:
                raise
            cpu = faiss.index_gpu_to_cpu(self.index)  # GPU indexes cannot remove: round trip through the CPU
            cpu.remove_ids(sel)
            self.index = faiss.index_cpu_to_gpu(self._res, 0, cpu)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def ids(self) -> np.ndarray:
        """The ids held (storage order for flat indexes, list by list for IVF)."""
        cpu = self.cpu_index()
        if self.kind == "flat":
            return faiss.vector_to_array(cpu.id_map).astype(np.int64)
        invlists = faiss.extract_index_ivf(cpu).invlists
        parts = [np.zeros(0, np.int64)]
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).astype(np.int64))
        return np.concatenate(parts)

    def scanned_per_query(self) -> int:
        """About how many floats one query reads (the whole index when flat; the probed lists and the centroids
        for IVF): a cost estimate."""
        if self.kind == "flat":
            return self.ntotal * self.dim
        return int(self.ntotal * self.dim * self.nprobe / max(self.nlist, 1)) + self.nlist * self.dim

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "ntotal": self.ntotal, "nlist": self.nlist or None,
                "nprobe": self.nprobe or None, "trained_n": self.trained_n or None, "gpu": self.gpu,
                "exact": self.kind == "flat"}

    # -- snapshots ------------------------------------------------------------------------------------------
    def serialize(self) -> np.ndarray:
        """The index as FAISS's serialised bytes (``uint8`` array, a copy)."""
        return faiss.serialize_index(self.cpu_index())

    @classmethod
    def read_snapshot(cls, path: Path, *, dim: int, nprobe: int = 0,
                      use_gpu: bool = False) -> tuple[VectorIndex, dict[str, Any]]:
        """Load a snapshot; raises :class:`SnapshotError` when it is unusable."""
        header, payload = read_snapshot_file(path)
        if header.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"{path}: unknown snapshot format {header.get('format')!r}")
        if header.get("dim") != dim:
            raise SnapshotError(f"{path}: holds {header.get('dim')}-d vectors, the gallery {dim}-d")
        kind = header.get("kind")
        if kind not in INDEX_KINDS:
            raise SnapshotError(f"{path}: unknown index kind {kind!r}")
        try:
            index = faiss.deserialize_index(payload)
        except RuntimeError as exc:
            raise SnapshotError(f"{path}: FAISS cannot read the index ({str(exc).splitlines()[0]})") from exc
        if index.d != dim or int(index.ntotal) != header.get("ntotal"):
            raise SnapshotError(f"{path}: the index does not match its header")
        wanted = faiss.IndexIDMap2 if kind == "flat" else faiss.IndexIVFFlat  # read_index returns the concrete class
        if not isinstance(index, wanted):
            raise SnapshotError(f"{path}: holds a {type(index).__name__}, not the {kind} index its header names")
        nlist = int(header.get("nlist") or 0)
        out = cls(dim, kind, nlist=nlist, nprobe=nprobe, index=index,
                  trained_n=int(header.get("trained_n") or header.get("ntotal") or 0))
        if use_gpu:
            out._to_gpu()
        return out, header


def write_snapshot_file(path: Path, header: dict[str, Any], payload: np.ndarray | bytes) -> int:
    head = json.dumps(header, sort_keys=True).encode()
    view = memoryview(payload).cast("B") if not isinstance(payload, bytes) else memoryview(payload)
    digest = hashlib.sha256(head)
    digest.update(view)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(len(head).to_bytes(4, "little"))
        f.write(head)
        f.write(view)
        f.write(digest.digest())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path.stat().st_size


def read_snapshot_file(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: {exc.strerror or exc}") from exc
    if len(data) < len(MAGIC) + 4 + 32 or not data.startswith(MAGIC):
        raise SnapshotError(f"{path}: not a reidserve index snapshot (or cut short)")
    n = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4
    if start + n + 32 > len(data):
        raise SnapshotError(f"{path}: truncated")
    head, payload, digest = data[start:start + n], data[start + n:-32], data[-32:]
    h = hashlib.sha256(head)
    h.update(payload)
    if h.digest() != digest:
        raise SnapshotError(f"{path}: checksum mismatch (corrupted or partly written)")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise SnapshotError(f"{path}: malformed header") from exc
    if not isinstance(header, dict):
        raise SnapshotError(f"{path}: malformed header")
    return header, np.frombuffer(payload, dtype=np.uint8)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
