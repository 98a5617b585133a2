"""k-reciprocal neighbour sets (Zhong et al., CVPR 2017): the one implementation behind the clustering's
sparse Jaccard distance (:mod:`reidserve.cluster`) and the evaluation's dense re-ranking
(:func:`reidserve.metrics.re_ranking`).

Given each point's neighbour list ``nbr[i]`` (the point itself and its ``k1`` nearest others, nearest first):

1. ``R(i, k) = {j in nbr[i, :k + 1] : i in nbr[j, :k + 1]}`` -- the k-reciprocal neighbours;
2. ``R*(i) = R(i, k1)`` united with every ``R(c, round(k1 / 2))``, ``c`` in ``R(i, k1)``, that shares *more than*
   two thirds of its members with ``R(i, k1)``.

Sets are handled as sorted ``row * N + column`` keys, so memory grows with ``N * k1 * k1 / 2``, never ``N ** 2``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expanded_reciprocal_sets", "reciprocal_mask"]


def _pair_keys(rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """Sorted ``row * n + col`` keys of the pairs."""
    return np.sort(rows.astype(np.int64) * n + cols.astype(np.int64))


def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Which ``queries`` occur in ``sorted_keys`` (same shape as ``queries``)."""
    if sorted_keys.size == 0:
        return np.zeros(np.shape(queries), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.size - 1)
    return sorted_keys[pos] == queries


def reciprocal_mask(nbr: np.ndarray) -> np.ndarray:
    """``mask[i, m]``: point ``nbr[i, m]`` has ``i`` in its own list ``nbr[nbr[i, m]]`` (of the same width)."""
    n, width = nbr.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), width)
    keys = _pair_keys(rows, nbr.ravel(), n)
    back = nbr.ravel().astype(np.int64) * n + rows
    return _contains(keys, back).reshape(n, width)


def expanded_reciprocal_sets(nbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(i, j)``, ``j`` in ``R*(i)``, from neighbour lists ``nbr`` ``[N, k1 + 1]`` (steps 1-2 above).

    Returns ``(rows, cols)`` (int64), sorted by row then column, each pair once.
    """
    n, width = nbr.shape
    k1 = width - 1
    kh = max(0, int(np.around(k1 / 2.0)))
    recip1 = reciprocal_mask(nbr)  # R(i, k1) as a mask over nbr
    nbr_h = nbr[:, : kh + 1]
    recip_h = reciprocal_mask(nbr_h)  # R(i, kh) as a mask over nbr[:, :kh + 1]
    size_h = recip_h.sum(axis=1)

    # candidates (i, c) with c in R(i, k1); overlap |R(c, kh) & R(i, k1)|
    ci, cm = np.nonzero(recip1)
    cand = nbr[ci, cm]
    r1_keys = _pair_keys(ci, cand, n)
    members = nbr_h[cand]  # [num_cand, kh + 1]
    member_ok = recip_h[cand]
    inside = _contains(r1_keys, ci[:, None].astype(np.int64) * n + members) & member_ok
    qualifies = inside.sum(axis=1) > (2.0 / 3.0) * size_h[cand]

    add_rows = np.repeat(ci[qualifies], nbr_h.shape[1])
    add_cols = members[qualifies].ravel()
    add_ok = member_ok[qualifies].ravel()
    rows = np.concatenate([ci, add_rows[add_ok]]).astype(np.int64)
    cols = np.concatenate([cand, add_cols[add_ok]]).astype(np.int64)
    keys = np.unique(rows * n + cols)
    return keys // n, keys % n
