"""The FAISS side of the SQLite + FAISS gallery: an ID-mapped inner-product index and its snapshot file.

:class:`VectorIndex` wraps ``IndexIDMap2(IndexFlatIP)`` (exact), an IVF index (approximate, for large galleries;
IVF indexes store the int64 ids themselves) whose lists hold 8-bit scalar-quantised vectors
(``IndexIVFScalarQuantizer``, codec ``sq8``, the default: a quarter of the memory read per query, so about twice the
queries per second at the same recall) or float32 ones (``IndexIVFFlat``, codec ``flat``, scores exact to float32),
or an ``IndexIDMap2(IndexHNSWFlat)`` (approximate graph search, cheaper per query than IVF at higher recall; CPU
only); flat and IVF optionally on a GPU when FAISS was built with GPU support.

HNSW graphs cannot remove vectors: a removed id becomes a *tombstone* (its slot in the id map is set to -1, and
every search passes a selector that skips negative ids, so a removed or replaced vector is never returned);
:attr:`VectorIndex.ntotal` counts live vectors only, and :meth:`VectorIndex.needs_rebuild` says when tombstones
exceed ``HNSW_MAX_DEAD`` of the graph (the store then rebuilds it from the live vectors in the background).

It is *not* thread-safe: FAISS allows no mutation concurrent with a search, so the store holds one lock
around every call.

A snapshot is one file written atomically (a temporary file of its own, fsync, rename, fsync of the folder)::

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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import faiss
import numpy as np

from pruneopt.common.files import atomic_write

from ..errors import ReidserveError

log = logging.getLogger(__name__)

MAGIC = b"RSIDX\x00\x01\n"
SNAPSHOT_FORMAT = "reidserve.index/1"
INDEX_KINDS = ("flat", "ivf", "hnsw")
# how IVF lists store vectors: 8-bit scalar quantisation per dimension (scores within ~1e-3 of the float32 inner
# product; recall@10 0.946 vs 0.946 for float32 and 0.46 vs 0.85 ms per query in batches of 16, 100,000 x 512
# re-ID-like vectors, 1024 lists, nprobe 64, 2 cores) or float32
IVF_CODECS = ("sq8", "flat")
_IVF_FACTORY = {"sq8": "SQ8", "flat": "Flat"}
HNSW_M = 32  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 40
# recall@10 0.999 at ~0.5 ms per query (efConstruction 40) on 100,000 x 512 re-ID-like vectors (bench/load.py)
HNSW_EF_SEARCH = 32
HNSW_MAX_DEAD = 0.2  # rebuild the graph when tombstones exceed this fraction of it
_LIVE = faiss.IDSelectorRange(0, 2**62)  # selects the live ids (tombstones have id -1)


class SnapshotError(ReidserveError):
    """A snapshot file that is missing, truncated, corrupted or written for another gallery."""


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def choose_nlist(n: int) -> int:
    """About 8 sqrt(n) inverted lists (FAISS suggests 4 to 16 sqrt(n)) with at least 39 training vectors each
    (FAISS's minimum): a power of two in [16, 16384]."""
    target = min(8.0 * math.sqrt(max(n, 1)), max(n, 1) / 39.0)
    return int(min(16384, max(16, 2 ** math.floor(math.log2(max(target, 1.0))))))


def ivf_codec(index: Any) -> str:
    """The codec of a CPU or GPU IVF index: "flat", "sq8", or "" for any other kind."""
    if isinstance(index, faiss.IndexIVFFlat) or type(index).__name__ == "GpuIndexIVFFlat":
        return "flat"
    sq = getattr(index, "sq", None)
    if (isinstance(index, faiss.IndexIVFScalarQuantizer) or type(index).__name__ == "GpuIndexIVFScalarQuantizer") \
            and getattr(sq, "qtype", None) == faiss.ScalarQuantizer.QT_8bit:
        return "sq8"
    return ""


def _hnsw_graph(index: Any) -> faiss.IndexHNSW:
    """The HNSW graph inside an ``IndexIDMap2`` (``downcast_index`` gives the concrete class; its stub says Index)."""
    return cast(faiss.IndexHNSW, faiss.downcast_index(index.index))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/32 of them, at least 16. With twice the lists of the former 4 sqrt(n) and the
    same number visited, a query scans half the vectors at equal or better recall: recall@10 0.939 vs 0.940 (2048
    lists / 64 visited vs 1024 / 64, sq8) on bench/load.py's 100,000 x 512 re-ID-like gallery, 0.993 vs 0.984 and
    0.999 vs 0.992 with 128- and 256-d latent structure, 0.994 vs 0.988 at 20,000 items; 0.35 vs 0.47 ms per query in
    batches of 16 on 2 cores."""
    return int(min(nlist, max(16, nlist // 32)))


@dataclass(frozen=True)
class IndexOptions:
    """The index a gallery asks for: its ``kind`` (flat, ivf, hnsw), the gallery size at which IVF takes over from
    exact search, IVF lists (0: :func:`choose_nlist`), lists searched (0: :func:`default_nprobe`) and codec, HNSW
    neighbours and candidates per query (0: ``HNSW_M``, ``HNSW_EF_SEARCH``), and whether to use a GPU."""

    kind: str = "ivf"
    ivf_threshold: int = 20_000
    nlist: int = 0
    nprobe: int = 0
    ivf_codec: str = "sq8"
    hnsw_m: int = 0
    ef_search: int = 0
    use_gpu: bool = False

    def build(self, dim: int, ids: np.ndarray, vectors: np.ndarray, *, train: bool = False) -> VectorIndex:
        """An index of this kind holding ``vectors``: an HNSW graph; an IVF index once the gallery reached
        ``ivf_threshold`` (or when ``train`` is asked for); else an exact flat one."""
        if self.kind == "hnsw":
            return VectorIndex.build_hnsw(dim, vectors, ids, hnsw_m=self.hnsw_m, ef_search=self.ef_search)
        if self.kind == "ivf" and (train or len(ids) >= self.ivf_threshold):
            return VectorIndex.train_ivf(dim, vectors, ids, nlist=self.nlist, nprobe=self.nprobe,
                                         use_gpu=self.use_gpu, codec=self.ivf_codec)
        index = VectorIndex(dim, "flat", use_gpu=self.use_gpu)
        index.add(ids, vectors)
        return index


class VectorIndex:
    """An ID-mapped inner-product FAISS index (flat, IVF or HNSW), on the CPU or (flat, IVF) a GPU."""

    def __init__(self, dim: int, kind: str = "flat", *, nlist: int = 0, nprobe: int = 0, use_gpu: bool = False,
                 index: Any = None, trained_n: int = 0, hnsw_m: int = 0, ef_search: int = 0) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose flat, ivf or hnsw")
        self.dim, self.kind = dim, kind
        self.ef_search = int(ef_search or HNSW_EF_SEARCH) if kind == "hnsw" else 0
        self.dead = 0  # HNSW tombstones
        self._pos: dict[int, int] | None = None  # HNSW: id -> slot of the live vectors (built on first use)
        self.nlist = nlist if kind == "ivf" else 0
        self.nprobe = nprobe or (default_nprobe(nlist) if kind == "ivf" else 0)
        self.gpu = False
        self._res: Any = None
        self.trained_n = int(trained_n)  # IVF: how many vectors the index was trained for
        if index is None:
            if kind == "ivf":
                raise ValueError("an IVF index is made by VectorIndex.train_ivf")
            if kind == "hnsw":
                hnsw = faiss.IndexHNSWFlat(dim, int(hnsw_m or HNSW_M), faiss.METRIC_INNER_PRODUCT)
                hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
                index = faiss.IndexIDMap2(hnsw)
            else:
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.index = index
        self.codec = ivf_codec(index) if kind == "ivf" else ""
        if kind == "hnsw":
            self.hnsw_m = int(_hnsw_graph(index).hnsw.nb_neighbors(1))  # type: ignore[attr-defined]  # not in the stub
            self.dead = int(index.ntotal) - int(np.count_nonzero(self._id_map() >= 0))
        else:
            self.hnsw_m = 0
        self._set_nprobe()
        if use_gpu:
            if kind == "hnsw":
                log.warning("FAISS has no GPU HNSW index; the HNSW index searches on the CPU")
            else:
                self._to_gpu()

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def train_ivf(cls, dim: int, vectors: np.ndarray, ids: np.ndarray, *, nlist: int = 0, nprobe: int = 0,
                  use_gpu: bool = False, seed: int = 0, codec: str = "sq8") -> VectorIndex:
        """An IVF index (lists coded by ``codec``: sq8 or flat) trained on (a sample of) ``vectors`` holding all
        of them."""
        if codec not in IVF_CODECS:
            raise ValueError(f"unknown IVF codec {codec!r}; choose {' or '.join(IVF_CODECS)}")
        n = int(vectors.shape[0])
        nlist = nlist or choose_nlist(n)
        if n < nlist:
            raise ValueError(f"IVF with {nlist} lists needs at least {nlist} vectors to train, got {n}")
        # IVF indexes map ids themselves (an IndexIDMap2 around one would go wrong on remove_ids)
        index = faiss.index_factory(dim, f"IVF{nlist},{_IVF_FACTORY[codec]}", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors if n <= 64 * nlist else vectors[np.sort(rng.choice(n, 64 * nlist, replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        out = cls(dim, "ivf", nlist=nlist, nprobe=nprobe, index=index, trained_n=n)
        out.add(ids, vectors)
        if use_gpu:
            out._to_gpu()
        return out

    @classmethod
    def build_hnsw(cls, dim: int, vectors: np.ndarray, ids: np.ndarray, *, hnsw_m: int = 0,
                   ef_search: int = 0) -> VectorIndex:
        """An HNSW index holding ``vectors`` (graph built with the calling thread's OpenMP threads)."""
        out = cls(dim, "hnsw", hnsw_m=hnsw_m, ef_search=ef_search)
        out.add(ids, vectors)
        return out

    def _id_map(self) -> np.ndarray:
        """A writable view of the IndexIDMap2's slot -> id array (valid until the next add)."""
        n = int(self.index.ntotal)
        return faiss.rev_swig_ptr(self.index.id_map.data(), n) if n else np.zeros(0, np.int64)

    def needs_rebuild(self) -> bool:
        """HNSW: whether tombstones exceed ``HNSW_MAX_DEAD`` of the graph."""
        return self.kind == "hnsw" and self.dead > HNSW_MAX_DEAD * max(int(self.index.ntotal), 1)

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
        """Vectors held (live ones: HNSW tombstones are not counted)."""
        return int(self.index.ntotal) - self.dead

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind == "hnsw":
            self._remove_hnsw(ids)  # an id added again replaces its vector (never two live slots for one id)
            if np.any(ids < 0):
                raise ValueError("HNSW ids must be non-negative")
            start = int(self.index.ntotal)
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            if self._pos is not None:
                self._pos.update(zip(ids.tolist(), range(start, start + len(ids)), strict=True))
            return
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def _remove_hnsw(self, ids: np.ndarray) -> None:
        if self._pos is None:
            self._pos = {int(i): s for s, i in enumerate(self._id_map().tolist()) if i >= 0}
        slots = [s for s in (self._pos.pop(int(i), None) for i in ids) if s is not None]
        if slots:
            self._id_map()[np.asarray(slots, dtype=np.int64)] = -1  # tombstones: skipped by every search
            self.dead += len(slots)

    def remove(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        sel = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind == "hnsw":
            self._remove_hnsw(sel)
            return
        try:
            self.index.remove_ids(sel)
        except RuntimeError:
            if not self.gpu:
                raise
            cpu = faiss.index_gpu_to_cpu(self.index)  # GPU indexes cannot remove: round trip through the CPU
            cpu.remove_ids(sel)  # type: ignore[arg-type]  # faiss's wrapper takes ids; its stub: an IDSelector
            self.index = faiss.index_cpu_to_gpu(self._res, 0, cpu)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            # the IndexIDMap2 hands the selector the ids (not the graph slots): tombstones (-1) are skipped
            params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # in faiss, not in its stub
                efSearch=max(self.ef_search, int(k)), sel=_LIVE if self.dead else None)
            return self.index.search(queries, k, params=params)
        return self.index.search(queries, k)

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """HNSW: (ids, vectors) of the live slots, read back from the graph's flat storage."""
        idmap = self._id_map()
        slots = np.flatnonzero(idmap >= 0)
        n = int(self.index.ntotal)
        storage = cast(faiss.IndexFlat, faiss.downcast_index(_hnsw_graph(self.index).storage))
        x = faiss.rev_swig_ptr(storage.get_xb(), n * self.dim).reshape(n, self.dim) if n else \
            np.zeros((0, self.dim), np.float32)
        return idmap[slots].copy(), x[slots].copy()

    def ids(self) -> np.ndarray:
        """The ids held (storage order for flat indexes, list by list for IVF)."""
        cpu = self.cpu_index()
        if self.kind == "flat":
            return faiss.vector_to_array(cpu.id_map).astype(np.int64)
        if self.kind == "hnsw":
            ids = faiss.vector_to_array(cpu.id_map).astype(np.int64)
            return ids[ids >= 0]
        invlists = faiss.extract_index_ivf(cpu).invlists
        parts = [np.zeros(0, np.int64)]
        if invlists is None:  # an IVF index without its lists holds nothing that can be read
            return parts[0]
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
        if self.kind == "hnsw":  # about efSearch x M distance computations
            return self.ef_search * max(self.hnsw_m, 1) * 2 * self.dim
        return int(self.ntotal * self.dim * self.nprobe / max(self.nlist, 1)) + self.nlist * self.dim

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "codec": self.codec or None, "ntotal": self.ntotal, "nlist": self.nlist or None,
                "nprobe": self.nprobe or None, "trained_n": self.trained_n or None, "gpu": self.gpu,
                "exact": self.kind == "flat", "hnsw_m": self.hnsw_m or None, "ef_search": self.ef_search or None,
                "tombstones": self.dead if self.kind == "hnsw" else None}

    # -- snapshots ------------------------------------------------------------------------------------------
    def snapshot_header(self, seq: int, model_id: str) -> dict[str, Any]:
        """The header of a snapshot of this index at store sequence number ``seq``."""
        return {"seq": seq, "model": model_id, "dim": self.dim, "kind": self.kind, "nlist": self.nlist,
                "codec": self.codec, "ntotal": self.ntotal, "trained_n": self.trained_n, "format": SNAPSHOT_FORMAT}

    def serialize(self) -> np.ndarray:
        """The index as FAISS's serialised bytes (``uint8`` array, a copy)."""
        return faiss.serialize_index(self.cpu_index())

    @classmethod
    def read_snapshot(cls, path: Path, *, dim: int, nprobe: int = 0, ef_search: int = 0,
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
        # read_index returns the concrete class
        wanted = (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer) if kind == "ivf" else faiss.IndexIDMap2
        hnsw_ok = isinstance(index, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(index.index),
                                                                       faiss.IndexHNSWFlat)
        if not isinstance(index, wanted) or (kind == "ivf" and not ivf_codec(index)) or (
                kind == "hnsw" and not hnsw_ok):
            raise SnapshotError(f"{path}: holds a {type(index).__name__}, not the {kind} index its header names")
        nlist = int(header.get("nlist") or 0)
        if kind == "ivf" and not nprobe and "codec" not in header:
            # written before the lists became ~8 sqrt(n) (the header had no codec then): keep visiting 1/16 of them
            nprobe = int(min(nlist, max(16, nlist // 16)))
        out = cls(dim, kind, nlist=nlist, nprobe=nprobe, index=index, ef_search=ef_search,
                  trained_n=int(header.get("trained_n") or header.get("ntotal") or 0))
        if index.d != dim or out.ntotal != header.get("ntotal"):
            raise SnapshotError(f"{path}: the index does not match its header")
        if use_gpu:
            out._to_gpu()
        return out, header


def check_snapshot_fits(path: Path, index: VectorIndex, header: dict[str, Any], *, store_seq: int, model_id: str,
                        options: IndexOptions) -> int:
    """The sequence number of a loaded snapshot if it fits the gallery it is to serve (the model, the store's
    sequence number, the index kind, IVF codec and HNSW degree asked for); raises :class:`SnapshotError`."""
    kind, codec, hnsw_m = options.kind, options.ivf_codec, options.hnsw_m
    snap_seq = int(header.get("seq", -1))
    if header.get("model", "") != model_id and model_id:
        raise SnapshotError(f"{path} was written for another model")
    if snap_seq > store_seq or snap_seq < 0:
        raise SnapshotError(f"{path} is newer than the store (seq {snap_seq} > {store_seq})")
    if index.kind == "ivf" and kind == "flat":
        raise SnapshotError(f"{path} holds an IVF index but --index flat was asked for")
    if (index.kind == "hnsw") != (kind == "hnsw"):
        raise SnapshotError(f"{path} holds a {index.kind} index, not the {kind} one asked for")
    if index.kind == "ivf" and index.codec != codec:
        raise SnapshotError(f"{path} holds an IVF index with {index.codec} lists, not {codec}")
    if index.kind == "hnsw" and hnsw_m and index.hnsw_m != hnsw_m:
        raise SnapshotError(f"{path} holds an HNSW graph with M {index.hnsw_m}, not {hnsw_m}")
    return snap_seq


def write_snapshot_file(path: Path, header: dict[str, Any], payload: np.ndarray | bytes, mode: int = 0o600) -> int:
    """Write a snapshot file atomically (:func:`pruneopt.common.files.atomic_write`: a temporary name of its own,
    so concurrent writers never share one; fsync, rename, fsync of the folder), readable by its owner only by
    default; returns its size in bytes."""
    head = json.dumps(header, sort_keys=True).encode()
    view = payload.data.cast("B") if not isinstance(payload, bytes) else memoryview(payload)
    digest = hashlib.sha256(head)
    digest.update(view)

    def write(f: IO[bytes]) -> None:
        f.write(MAGIC)
        f.write(len(head).to_bytes(4, "little"))
        f.write(head)
        f.write(view)
        f.write(digest.digest())

    atomic_write(path, write, mode=mode)
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
