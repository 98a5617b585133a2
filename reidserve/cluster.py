"""Pseudo-labels for unsupervised re-ID: FAISS kNN, the k-reciprocal Jaccard distance, DBSCAN.

The Jaccard distance (Zhong et al., CVPR 2017, as used by SpCL and cluster-contrast-reid) is computed
sparsely: memory grows with ``N * k1`` (neighbour lists and encodings) plus the stored pairs, never
with ``N ** 2``.

Definition (features ``f`` are L2-normalised, ``d(i, j) = 2 - 2 f_i . f_j``):

1. ``N(i, k)``: ``i`` followed by its ``k`` nearest other points (inner product, FAISS exact search).
2. ``R(i, k) = {j in N(i, k) : i in N(j, k)}`` -- the k-reciprocal neighbours (``i`` included).
3. Expansion: ``R*(i) = R(i, k1)`` united with every ``R(c, round(k1 / 2))``, ``c`` in ``R(i, k1)``,
   that shares *more than* two thirds of its members with ``R(i, k1)``.
4. Encoding: ``V[i, j] = exp(-d(i, j)) / sum_{m in R*(i)} exp(-d(i, m))`` for ``j`` in ``R*(i)``, else 0.
5. Local query expansion (``k2 > 1``): ``V[i] <- mean of V[n]`` over the first ``k2`` entries ``n`` of
   ``N(i, k1)`` (``i`` itself and its ``k2 - 1`` nearest neighbours).
6. ``jaccard(i, j) = 1 - sum_c min(V[i, c], V[j, c]) / sum_c max(V[i, c], V[j, c])``.

Pairs whose encodings share no support are at distance exactly 1 and are not stored. DBSCAN
(scikit-learn, ``metric="precomputed"``) then runs on a sparse matrix that holds only the pairs within
``eps`` (every other pair is farther than ``eps`` and cannot be a DBSCAN neighbour), so the clustering is
the same as on the dense matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from pruneopt.common.threads import faiss_threads

from .errors import ReidserveError
from .reciprocal import expanded_reciprocal_sets

__all__ = [
    "ClusterConfig",
    "ClusterError",
    "ClusterResult",
    "OUTLIER_MODES",
    "cluster_features",
    "faiss_gpu_available",
    "jaccard_distance",
    "k_reciprocal_encoding",
    "knn",
    "singleton_labels",
]

OUTLIER_MODES = ("drop", "singleton")


class ClusterError(ReidserveError):
    """Bad clustering input (shape, NaN, parameters)."""


@dataclass(frozen=True)
class ClusterConfig:
    """k-reciprocal Jaccard distance + DBSCAN parameters (cluster-contrast-reid's defaults for Market-1501)."""

    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    min_samples: int = 4
    outliers: Literal["drop", "singleton"] = "drop"

    def __post_init__(self) -> None:
        if self.k1 < 1 or self.k2 < 1:
            raise ClusterError(f"k1 and k2 must be >= 1, got k1={self.k1}, k2={self.k2}")
        if not 0.0 < self.eps < 1.0:
            raise ClusterError(f"eps is a Jaccard distance threshold in (0, 1), got {self.eps}")
        if self.min_samples < 1:
            raise ClusterError(f"min_samples must be >= 1, got {self.min_samples}")
        if self.outliers not in OUTLIER_MODES:
            raise ClusterError(f"outliers must be one of {', '.join(OUTLIER_MODES)}, got {self.outliers!r}")


@dataclass(frozen=True)
class ClusterResult:
    """``labels``: int64 ``[N]``, clusters ``0..num_clusters-1`` then (``singleton`` mode) one label per
    outlier; ``-1`` marks an outlier in ``drop`` mode. ``num_outliers`` counts DBSCAN's noise points in both
    modes; ``seconds`` is a breakdown of the time spent."""

    labels: np.ndarray
    num_clusters: int
    num_outliers: int
    seconds: dict[str, float]

    @property
    def num_identities(self) -> int:
        """Distinct non-negative labels (clusters, plus singletons in ``singleton`` mode)."""
        return int(np.unique(self.labels[self.labels >= 0]).size)


# ----------------------------------------------------------------------------------------------
# kNN
# ----------------------------------------------------------------------------------------------


def faiss_gpu_available() -> bool:
    """Whether the installed FAISS is a GPU build and sees at least one GPU."""
    import faiss  # lazy: a GPU build of FAISS initialises CUDA on import; only clustering needs it

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _check_features(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ClusterError(f"features must be a 2-D array with at least 2 rows, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ClusterError("features contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ClusterError("features contain all-zero rows, which cannot be L2-normalised")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def knn(
    features: np.ndarray, k: int, *, use_gpu: bool | None = None, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product kNN of the L2-normalised rows among themselves (FAISS ``IndexFlatIP``).

    Returns ``(similarities, indices)``, both ``[N, k + 1]``; column 0 is the point itself (forced, so
    duplicates cannot displace it) and the other columns its ``k`` nearest other points, most similar first.
    ``use_gpu=None`` uses a FAISS GPU index when :func:`faiss_gpu_available`; ``threads`` sets FAISS's OpenMP
    thread count for the CPU search (restored afterwards).
    """
    import faiss  # lazy: a GPU build of FAISS initialises CUDA on import; only clustering needs it

    x = _check_features(features)
    n, dim = x.shape
    if not 1 <= k < n:
        raise ClusterError(f"k must be in [1, {n - 1}] for {n} points, got {k}")
    gpu = faiss_gpu_available() if use_gpu is None else bool(use_gpu)
    if gpu and not faiss_gpu_available():
        raise ClusterError("use_gpu=True but this FAISS build has no GPU support or sees no GPU")
    kk = min(k + 1, n)
    with faiss_threads(threads):
        index: faiss.Index
        if gpu:
            res = faiss.StandardGpuResources()
            index = faiss.GpuIndexFlatIP(res, dim)
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(x)
        sims, idx = index.search(x, kk)
    # put each point first (a stable sort moves it behind the others) and keep its k nearest other points
    order = np.argsort(idx == np.arange(n)[:, None], axis=1, kind="stable")
    idx_o = np.take_along_axis(idx, order, axis=1)[:, :k]
    sim_o = np.take_along_axis(sims, order, axis=1)[:, :k]
    rows = np.arange(n)
    out_idx = np.concatenate([rows[:, None], idx_o], axis=1).astype(np.int64)
    out_sim = np.concatenate([np.ones((n, 1), np.float32), sim_o.astype(np.float32)], axis=1)
    return out_sim, out_idx


# ----------------------------------------------------------------------------------------------
# k-reciprocal encoding and Jaccard distance
# ----------------------------------------------------------------------------------------------


def _pair_similarities(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 8192) -> np.ndarray:
    out = np.empty(rows.size, dtype=np.float64)
    for s in range(0, rows.size, chunk):
        e = min(s + chunk, rows.size)
        out[s:e] = np.einsum("ij,ij->i", x[rows[s:e]], x[cols[s:e]], dtype=np.float64)
    return out


def k_reciprocal_encoding(
    features: np.ndarray,
    k1: int = 30,
    k2: int = 6,
    *,
    use_gpu: bool | None = None,
    threads: int | None = None,
) -> sp.csr_matrix:
    """The sparse k-reciprocal encoding ``V`` (``N x N`` CSR, float64, rows summing to 1): steps 1-5 above
    (steps 2-3 by :func:`reidserve.reciprocal.expanded_reciprocal_sets`).

    ``k1`` and ``k2`` are clipped to ``N - 1`` and ``N`` for tiny inputs.
    """
    x = _check_features(features)
    n = x.shape[0]
    k1 = min(int(k1), n - 1)
    k2 = min(int(k2), k1 + 1)
    if k1 < 1 or k2 < 1:
        raise ClusterError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    knn_sims, nbr = knn(x, k1, use_gpu=use_gpu, threads=threads)  # [n, k1 + 1], self first
    rows, cols = expanded_reciprocal_sets(nbr)  # steps 2-3
    keys = rows * n + cols

    # similarities: from the kNN search where the pair is in it (most are), computed for the others
    knn_keys = np.arange(n, dtype=np.int64)[:, None] * n + nbr
    knn_order = np.argsort(knn_keys, axis=None)
    sorted_keys = knn_keys.ravel()[knn_order]
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    found = sorted_keys[pos] == keys
    sims = np.empty(keys.size, dtype=np.float64)
    sims[found] = knn_sims.ravel()[knn_order[pos[found]]]
    sims[~found] = _pair_similarities(x, rows[~found], cols[~found])
    w = np.exp(-(2.0 - 2.0 * sims))
    w /= np.bincount(rows, weights=w, minlength=n)[rows]
    v = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    if k2 > 1:
        qe_rows = np.repeat(np.arange(n), k2)
        qe = sp.csr_matrix((np.full(n * k2, 1.0 / k2), (qe_rows, nbr[:, :k2].ravel())), shape=(n, n))
        v = qe @ v
    v = sp.csr_matrix(v)
    v.sum_duplicates()
    v.sort_indices()
    return v


def _sum_min_pairs(
    v: sp.csr_matrix, budget: int, max_distance: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pair (i, j) with shared support: ``sum_c min(V[i, c], V[j, c])`` and the Jaccard distance.

    Rows are processed in blocks whose join (entries of a row times entries of the matching columns) stays
    within ``budget`` elements; each block accumulates into a dense ``block x N`` buffer.
    """
    n = v.shape[0]
    csc = v.tocsc()
    csc.sort_indices()
    col_nnz = np.diff(csc.indptr)
    row_sum = np.asarray(v.sum(axis=1)).ravel()
    entry_rows = np.repeat(np.arange(n), np.diff(v.indptr))
    work = np.bincount(entry_rows, weights=col_nnz[v.indices], minlength=n)
    cum = np.concatenate([[0.0], np.cumsum(work)])
    max_rows = max(1, budget // max(n, 1))
    out_r: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    out_d: list[np.ndarray] = []
    start = 0
    while start < n:
        stop = int(np.searchsorted(cum, cum[start] + budget, side="right")) - 1
        stop = min(max(stop, start + 1), start + max_rows, n)
        lo, hi = v.indptr[start], v.indptr[stop]
        sub_r = entry_rows[lo:hi] - start
        sub_c = v.indices[lo:hi]
        a = v.data[lo:hi]
        counts = col_nnz[sub_c]
        total = int(counts.sum())
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = np.repeat(csc.indptr[sub_c], counts) + offsets
        mins = np.minimum(np.repeat(a, counts), csc.data[idx])
        flat = np.repeat(sub_r.astype(np.int64), counts) * n + csc.indices[idx]
        acc = np.bincount(flat, weights=mins, minlength=(stop - start) * n)
        nz = np.flatnonzero(acc > 0)
        r = nz // n + start
        c = nz % n
        m = acc[nz]
        d = 1.0 - m / (row_sum[r] + row_sum[c] - m)
        np.clip(d, 0.0, 1.0, out=d)
        d[r == c] = 0.0
        if max_distance is not None:
            keep = d <= max_distance
            r, c, d = r[keep], c[keep], d[keep]
        out_r.append(r)
        out_c.append(c)
        out_d.append(d)
        start = stop
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_d)


def jaccard_distance(
    features: np.ndarray,
    k1: int = 30,
    k2: int = 6,
    *,
    max_distance: float | None = None,
    use_gpu: bool | None = None,
    threads: int | None = None,
    block_budget: int = 1 << 22,
) -> sp.csr_matrix:
    """The k-reciprocal Jaccard distance of the rows of ``features``, as a sparse symmetric ``N x N`` CSR.

    Stored entries are the pairs whose encodings share support (their distance is < 1; the diagonal is
    stored as an explicit 0), restricted to distances ``<= max_distance`` when given. Every pair that is not
    stored is at distance 1 (or above ``max_distance``). ``block_budget`` bounds the temporary arrays of the
    pair join (elements per block).
    """
    v = k_reciprocal_encoding(features, k1, k2, use_gpu=use_gpu, threads=threads)
    n = v.shape[0]
    r, c, d = _sum_min_pairs(v, int(block_budget), max_distance)
    out = sp.csr_matrix((d, c, np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))])), shape=(n, n))
    out.has_sorted_indices = True  # rows come out in order and each row's columns ascending
    return out


# ----------------------------------------------------------------------------------------------
# DBSCAN
# ----------------------------------------------------------------------------------------------


def singleton_labels(labels: np.ndarray) -> np.ndarray:
    """Give every ``-1`` its own new label after the largest existing one (in index order)."""
    lab = np.asarray(labels, dtype=np.int64).copy()
    out = lab < 0
    start = int(lab.max()) + 1 if (~out).any() else 0
    lab[out] = start + np.arange(int(out.sum()))
    return lab


def cluster_features(
    features: np.ndarray,
    config: ClusterConfig | None = None,
    *,
    use_gpu: bool | None = None,
    threads: int | None = None,
) -> ClusterResult:
    """Pseudo-labels: Jaccard distance (pairs within ``eps`` only) then DBSCAN with a precomputed sparse matrix.

    Cluster ids are renumbered ``0..C-1`` by first appearance, so results do not depend on DBSCAN's numbering.
    """
    cfg = config or ClusterConfig()
    t0 = time.perf_counter()
    dist = jaccard_distance(features, cfg.k1, cfg.k2, max_distance=cfg.eps, use_gpu=use_gpu, threads=threads)
    t1 = time.perf_counter()
    raw = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, metric="precomputed").fit(dist).labels_
    t2 = time.perf_counter()
    labels = np.full(raw.shape, -1, dtype=np.int64)
    clustered = raw >= 0
    if clustered.any():
        _, first = np.unique(raw[clustered], return_index=True)
        order = np.argsort(first)  # clusters by first appearance
        remap = np.empty(int(raw.max()) + 1, dtype=np.int64)
        remap[np.unique(raw[clustered])[order]] = np.arange(order.size)
        labels[clustered] = remap[raw[clustered]]
    num_clusters = int(labels.max()) + 1 if clustered.any() else 0
    num_outliers = int((~clustered).sum())
    if cfg.outliers == "singleton":
        labels = singleton_labels(labels)
    return ClusterResult(labels, num_clusters, num_outliers, {"jaccard": t1 - t0, "dbscan": t2 - t1})
