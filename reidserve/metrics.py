"""Re-ID evaluation: CMC, mAP and mINP under the Market-1501 protocol, and k-reciprocal re-ranking.

Protocol (``protocol="market"``, the standard one): for each query, gallery items with the same
pid **and** the same camera as the query are removed, as are gallery junk items (pid ``-1``).
Queries with no remaining true match are skipped. Then, over the remaining ranked gallery:

* CMC@k: 1 if a true match is within the first ``k``; averaged over valid queries.
* AP: non-interpolated average precision, ``mean_{j-th match at rank r_j} (j / r_j)``.
* INP (Ye et al. 2021): ``num_matches / rank_of_the_last_match``; mINP is its mean.

Other ``protocol`` values restrict the gallery differently (used to compare same- and
cross-camera difficulty): ``"cross_camera"`` removes *every* gallery item from the query's camera,
``"same_camera"`` keeps only gallery items from the query's camera (same-pid items included), and
``"all"`` keeps everything (except junk). Ties in distance are broken by gallery order (stable
sort), so results are deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from .errors import ReidserveError
from .reciprocal import expanded_reciprocal_sets

__all__ = [
    "MetricsError",
    "ReidMetrics",
    "evaluate",
    "evaluate_features",
    "pairwise_distance",
    "re_ranking",
    "PROTOCOLS",
]

Protocol = Literal["market", "cross_camera", "same_camera", "all"]
PROTOCOLS: tuple[str, ...] = ("market", "cross_camera", "same_camera", "all")


class MetricsError(ReidserveError):
    """Inputs to an evaluation are inconsistent or leave nothing to evaluate."""


@dataclass(frozen=True)
class ReidMetrics:
    """Retrieval figures in ``[0, 1]`` averaged over ``num_valid_queries`` queries."""

    mAP: float
    rank1: float
    rank5: float
    rank10: float
    rank20: float
    mINP: float
    num_valid_queries: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"mAP {100 * self.mAP:.2f}  R1 {100 * self.rank1:.2f}  R5 {100 * self.rank5:.2f}  "
            f"R10 {100 * self.rank10:.2f}  R20 {100 * self.rank20:.2f}  mINP {100 * self.mINP:.2f}  "
            f"({self.num_valid_queries} queries)"
        )


def _vector(name: str, values: np.ndarray | list[int], length: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise MetricsError(
            f"{name} must be 1-D of length {length} (from the distance matrix), got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise MetricsError(f"{name} must hold integers")
        arr = arr.astype(np.int64)
    return arr


def evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray | list[int],
    g_pids: np.ndarray | list[int],
    q_camids: np.ndarray | list[int],
    g_camids: np.ndarray | list[int],
    *,
    protocol: Protocol = "market",
    chunk_size: int = 256,
) -> ReidMetrics:
    """CMC rank-1/5/10/20, mAP and mINP from a ``num_query x num_gallery`` distance matrix.

    Smaller distance = more similar. Work is done ``chunk_size`` queries at a time, so memory stays
    at a few ``chunk_size x num_gallery`` arrays (Market-1501's 3368 x 19732 is fine).
    """
    d = np.asarray(distmat)
    if d.ndim != 2:
        raise MetricsError(f"distmat must be 2-D (num_query x num_gallery), got shape {d.shape}")
    nq, ng = d.shape
    if nq == 0 or ng == 0:
        raise MetricsError(
            f"distmat is empty (shape {d.shape}): need at least one query and one gallery item"
        )
    if not np.issubdtype(d.dtype, np.number) or np.isnan(d).any():
        raise MetricsError("distmat must be numeric without NaN")
    if protocol not in PROTOCOLS:
        raise MetricsError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if chunk_size < 1:
        raise MetricsError(f"chunk_size must be >= 1, got {chunk_size}")
    qp, qc = _vector("q_pids", q_pids, nq), _vector("q_camids", q_camids, nq)
    gp, gc = _vector("g_pids", g_pids, ng), _vector("g_camids", g_camids, ng)

    ranks_at = np.array([1, 5, 10, 20])
    cmc_hits = np.zeros(len(ranks_at), dtype=np.int64)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        ranked = _match_ranks(d[start:stop], qp[start:stop], qc[start:stop], gp, gc, protocol)
        if ranked is None:
            continue
        rank, row = ranked
        num_rel = np.bincount(row, minlength=stop - start)
        first_idx = np.cumsum(num_rel) - num_rel  # index in `rank` of each row's first match
        hit_no = np.arange(rank.size) - first_idx[row] + 1  # this is the j-th match of its row
        valid = num_rel > 0
        ap = np.bincount(row, weights=hit_no / rank, minlength=stop - start)[valid] / num_rel[valid]
        first_rank = rank[first_idx[valid]]
        last_rank = rank[first_idx[valid] + num_rel[valid] - 1]
        cmc_hits += (first_rank[:, None] <= ranks_at[None, :]).sum(axis=0)
        ap_sum += float(ap.sum())
        inp_sum += float((num_rel[valid] / last_rank).sum())
        num_valid += int(valid.sum())
    if num_valid == 0:
        raise MetricsError(
            f"no valid query under the {protocol!r} protocol: no query has a true match in the gallery "
            f"(check that query and gallery pids/camids line up)"
        )
    cmc = cmc_hits / num_valid
    return ReidMetrics(
        mAP=ap_sum / num_valid,
        rank1=float(cmc[0]),
        rank5=float(cmc[1]),
        rank10=float(cmc[2]),
        rank20=float(cmc[3]),
        mINP=inp_sum / num_valid,
        num_valid_queries=num_valid,
    )


def _match_ranks(d: np.ndarray, qp: np.ndarray, qc: np.ndarray, gp: np.ndarray, gc: np.ndarray,
                 protocol: str) -> tuple[np.ndarray, np.ndarray] | None:
    """For a chunk of queries (rows of ``d``): the 1-based rank of every true match among the gallery items the
    protocol keeps, and its query row, in row order then rank order; None when no query has a match."""
    ng = d.shape[1]
    order = np.argsort(d, axis=1, kind="stable")
    gp_o = gp[order]
    # Only the (few) gallery items of the query's identity and the removed items matter: the
    # rank of a match among kept items is its sorted position minus the removed items before it.
    cand = np.flatnonzero(gp_o == qp[:, None])  # row-major flat positions, sorted
    cand_row = cand // ng
    cand_cam = gc[order.ravel()[cand]]
    if protocol in ("market", "all"):
        is_match = cand_cam != qc[cand_row] if protocol == "market" else np.ones(cand.size, bool)
        removed = np.flatnonzero(gp_o == -1)
        if protocol == "market":
            removed = np.union1d(removed, cand[~is_match])
    else:
        same_cam = gc[order] == qc[:, None]
        is_match = cand_cam == qc[cand_row]
        if protocol == "cross_camera":
            is_match = ~is_match
        removed = np.flatnonzero((gp_o == -1) | (~same_cam if protocol == "same_camera" else same_cam))
    is_match &= qp[cand_row] != -1  # junk never counts as a match
    match, row = cand[is_match], cand_row[is_match]
    if match.size == 0:
        return None
    before = np.searchsorted(removed, match) - np.searchsorted(removed, row * ng)
    return match - row * ng + 1 - before, row


def pairwise_distance(x: np.ndarray, y: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Distance matrix between rows of ``x`` (n x d) and ``y`` (m x d), as float32.

    ``euclidean``: L2 distance; ``sqeuclidean``: its square; ``cosine``: ``1 - cos`` similarity.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise MetricsError(f"features must be 2-D with the same dimension, got {x.shape} and {y.shape}")
    if metric == "cosine":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        yn = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return (1.0 - xn @ yn.T).astype(np.float32)
    if metric not in ("euclidean", "sqeuclidean"):
        raise MetricsError(f"unknown metric {metric!r}: choose euclidean, sqeuclidean or cosine")
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    sq = np.maximum(sq, 0.0)
    return (sq if metric == "sqeuclidean" else np.sqrt(sq)).astype(np.float32)


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 256,
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017); returns the new query x gallery distances.

    Follows the authors' reference implementation (squared distances normalised per row, k-reciprocal
    sets expanded with the k1/2-reciprocal sets of their members, Gaussian-weighted encodings,
    local query expansion over k2 neighbours, Jaccard distance mixed with the original distance by
    ``lambda_value``), vectorised with numpy. It works on dense ``(Q+G) x (Q+G)`` matrices, so it
    is meant for test-size problems (a few thousand images take seconds; Market-1501 needs ~10 GB).
    """
    qg = np.asarray(q_g_dist, dtype=np.float32)
    qq = np.asarray(q_q_dist, dtype=np.float32)
    gg = np.asarray(g_g_dist, dtype=np.float32)
    if qg.ndim != 2 or qq.shape != (qg.shape[0],) * 2 or gg.shape != (qg.shape[1],) * 2:
        raise MetricsError(
            f"re_ranking needs q_g (Q x G), q_q (Q x Q) and g_g (G x G) matrices, got "
            f"{qg.shape}, {qq.shape}, {gg.shape}"
        )
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise MetricsError(
            f"need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1, got {k1}, {k2}, {lambda_value}"
        )
    nq = qg.shape[0]
    n = nq + qg.shape[1]
    dist = np.block([[qq, qg], [qg.T, gg]])
    if np.isnan(dist).any():
        raise MetricsError("distance matrices contain NaN")
    dist = np.square(dist, dtype=np.float32)
    # the reference normalises columns by their max then transposes: row i is divided by max of column i
    dist = (dist / np.maximum(dist.max(axis=0), 1e-12)).T.copy()

    k1 = min(k1, n - 1)
    kq = min(k2, n)
    rank_top = _nearest(dist, max(k1 + 1, kq))
    # R*(i): k1-reciprocal sets expanded with k1/2-reciprocal ones (reidserve.reciprocal), Gaussian-weighted
    rows, cols = expanded_reciprocal_sets(rank_top[:, : k1 + 1])
    weights = np.exp(-dist)
    v = np.zeros((n, n), dtype=np.float32)
    v[rows, cols] = weights[rows, cols]
    del weights
    v /= v.sum(axis=1, keepdims=True)
    if kq > 1:
        v_qe = np.zeros_like(v)
        for t in range(kq):
            v_qe += v[rank_top[:, t]]
        v = v_qe / kq
        del v_qe
    return _mixed_jaccard(v, dist, nq, lambda_value, chunk_size)


def _nearest(dist: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest columns, nearest first (ties by column order; all columns when ``k >= n``)."""
    if k < dist.shape[1]:
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        part_d = np.take_along_axis(dist, part, axis=1)
        return np.take_along_axis(part, np.argsort(part_d, axis=1, kind="stable"), axis=1)
    return np.argsort(dist, axis=1, kind="stable")


def _mixed_jaccard(v: np.ndarray, dist: np.ndarray, nq: int, lambda_value: float, chunk_size: int) -> np.ndarray:
    """The Jaccard distance of the encodings ``v`` of each query to each gallery item, mixed with the original
    distance ``dist`` by ``lambda_value``."""
    n = v.shape[0]
    # Jaccard distance of each query to every image: sum_k min(V[i, k], V[j, k]) over shared k,
    # computed as a sparse join on the columns of V.
    nz_rows, nz_cols = np.nonzero(v)
    by_col = np.argsort(nz_cols, kind="stable")
    col_rows, col_vals = nz_rows[by_col], v[nz_rows[by_col], nz_cols[by_col]]
    col_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(nz_cols, minlength=n), out=col_ptr[1:])
    final = np.empty((nq, n - nq), dtype=np.float32)
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        sub_r, sub_c = np.nonzero(v[start:stop])
        a = v[start + sub_r, sub_c]
        counts = col_ptr[sub_c + 1] - col_ptr[sub_c]
        total = int(counts.sum())
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = np.repeat(col_ptr[sub_c], counts) + offsets
        mins = np.minimum(np.repeat(a, counts), col_vals[idx])
        flat = np.repeat(sub_r, counts) * n + col_rows[idx]
        temp = np.bincount(flat, weights=mins, minlength=(stop - start) * n).reshape(stop - start, n)
        jaccard = 1.0 - temp / (2.0 - temp)
        final[start:stop] = (jaccard * (1 - lambda_value) + dist[start:stop] * lambda_value)[:, nq:]
    return final


def evaluate_features(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    q_pids: np.ndarray | list[int],
    g_pids: np.ndarray | list[int],
    q_camids: np.ndarray | list[int],
    g_camids: np.ndarray | list[int],
    *,
    metric: str = "euclidean",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    protocol: Protocol = "market",
) -> ReidMetrics:
    """Distance matrix from features (optionally k-reciprocal re-ranked), then :func:`evaluate`."""
    qg = pairwise_distance(query_feats, gallery_feats, metric)
    if rerank:
        qq = pairwise_distance(query_feats, query_feats, metric)
        gg = pairwise_distance(gallery_feats, gallery_feats, metric)
        qg = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lambda_value)
    return evaluate(qg, q_pids, g_pids, q_camids, g_camids, protocol=protocol)
