"""k-reciprocal Jaccard distance and DBSCAN pseudo-labels (reidserve.cluster)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from reidserve.cluster import (
    ClusterConfig,
    ClusterError,
    cluster_features,
    jaccard_distance,
    k_reciprocal_encoding,
    knn,
    singleton_labels,
)


def clustered(n_clusters: int, per: int, dim: int, spread: float, seed: int, noise: int = 0) -> tuple[
    np.ndarray, np.ndarray
]:
    """L2-normalised points around random centres (+ ``noise`` uniformly random points labelled -1)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, per, axis=0) + spread * rng.standard_normal((n_clusters * per, dim)) / np.sqrt(dim)
    y = np.repeat(np.arange(n_clusters), per)
    if noise:
        x = np.concatenate([x, rng.standard_normal((noise, dim))])
        y = np.concatenate([y, -np.ones(noise, dtype=np.int64)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(len(x))
    return x[perm].astype(np.float32), y[perm]


def direct_jaccard(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The definition, written out with dense N x N arrays and Python loops (O(N^2) memory)."""
    x = x.astype(np.float64)
    n = len(x)
    dist = 2.0 - 2.0 * x @ x.T
    order = np.argsort(dist, axis=1, kind="stable")
    # i first, then its nearest other points
    ranked = [np.concatenate([[i], [j for j in order[i] if j != i]]) for i in range(n)]

    def reciprocal(i: int, k: int) -> set[int]:
        return {int(j) for j in ranked[i][: k + 1] if i in set(ranked[int(j)][: k + 1].tolist())}

    kh = int(np.around(k1 / 2.0))
    r1 = [reciprocal(i, k1) for i in range(n)]
    rh = [reciprocal(i, kh) for i in range(n)]
    v = np.zeros((n, n))
    for i in range(n):
        expanded = set(r1[i])
        for c in r1[i]:
            if len(rh[c] & r1[i]) > 2.0 / 3.0 * len(rh[c]):
                expanded |= rh[c]
        idx = np.array(sorted(expanded))
        w = np.exp(-dist[i, idx])
        v[i, idx] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[ranked[i][:k2]].mean(axis=0) for i in range(n)])
    jac = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            jac[i, j] = 1.0 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum()
    return jac


@pytest.mark.parametrize("k1, k2", [(30, 6), (10, 1), (7, 3)])
def test_jaccard_matches_direct_definition(k1: int, k2: int) -> None:
    x, _ = clustered(n_clusters=6, per=14, dim=16, spread=0.6, seed=1, noise=6)
    expected = direct_jaccard(x, k1, k2)
    got = jaccard_distance(x, k1, k2, threads=1)
    assert sp.issparse(got) and got.shape == expected.shape
    dense = np.ones_like(expected)
    coo = got.tocoo()
    dense[coo.row, coo.col] = coo.data
    np.testing.assert_allclose(dense, expected, atol=1e-5)
    # exactly the pairs with shared support are stored (distance < 1), diagonal included
    stored = np.zeros(expected.shape, dtype=bool)
    stored[coo.row, coo.col] = True
    assert np.array_equal(stored, expected < 1.0 - 1e-12)
    assert np.all(got.diagonal() == 0.0)
    if k1 <= 10:  # with small k1, far fewer than N^2 entries on clustered data
        assert got.nnz < 0.5 * expected.size


def test_jaccard_max_distance_keeps_only_close_pairs_and_small_blocks_agree() -> None:
    x, _ = clustered(n_clusters=5, per=12, dim=8, spread=0.8, seed=2)
    full = jaccard_distance(x, 20, 6, threads=1)
    cut = jaccard_distance(x, 20, 6, max_distance=0.5, threads=1, block_budget=500)  # many tiny blocks
    assert cut.nnz < full.nnz and cut.data.max() <= 0.5
    full_coo = full.tocoo()
    close = full_coo.data <= 0.5
    expected = set(zip(full_coo.row[close].tolist(), full_coo.col[close].tolist(), strict=True))
    coo = cut.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist(), strict=True)) == expected
    np.testing.assert_allclose(coo.data, full.toarray()[coo.row, coo.col], atol=1e-12)


def test_encoding_rows_are_distributions() -> None:
    x, _ = clustered(4, 10, 8, 0.5, seed=3)
    v = k_reciprocal_encoding(x, 10, 4, threads=1)
    np.testing.assert_allclose(np.asarray(v.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert (v.data > 0).all()


def test_knn_puts_self_first_even_with_duplicates() -> None:
    x, _ = clustered(3, 5, 4, 0.3, seed=4)
    x = np.concatenate([x, x[:3]])  # exact duplicates of rows 0..2 as rows 15..17
    sims, idx = knn(x, 4, threads=1)
    assert idx.shape == (18, 5) and np.array_equal(idx[:, 0], np.arange(18))
    assert idx[0, 1] == 15 and idx[15, 1] == 0  # the duplicate is the nearest other point
    assert np.all(np.diff(sims[:, 1:], axis=1) <= 1e-6)
    assert all(len(set(row)) == 5 for row in idx.tolist())


def test_clustering_recovers_planted_clusters() -> None:
    x, y = clustered(n_clusters=12, per=20, dim=64, spread=0.5, seed=5)
    res = cluster_features(x, ClusterConfig(k1=20, k2=6, eps=0.6, min_samples=4), threads=1)
    assert res.num_clusters == 12
    assert adjusted_rand_score(y, res.labels) > 0.95
    assert set(np.unique(res.labels)) <= set(range(-1, 12))
    assert res.seconds["jaccard"] >= 0 and res.seconds["dbscan"] >= 0


def test_outlier_modes() -> None:
    x, y = clustered(n_clusters=6, per=20, dim=64, spread=0.4, seed=6, noise=10)
    drop = cluster_features(x, ClusterConfig(k1=20, eps=0.5, outliers="drop"), threads=1)
    single = cluster_features(x, ClusterConfig(k1=20, eps=0.5, outliers="singleton"), threads=1)
    assert drop.num_clusters == single.num_clusters == 6
    assert drop.num_outliers == single.num_outliers >= 5
    noise = drop.labels == -1
    assert noise.sum() == drop.num_outliers
    assert np.all(y[noise] == -1)  # every outlier is one of the 10 random points (some join a nearby cluster)
    assert adjusted_rand_score(y[y >= 0], drop.labels[y >= 0]) > 0.99
    assert single.labels.min() == 0
    assert np.array_equal(single.labels[~noise], drop.labels[~noise])
    outl = single.labels[noise]
    assert len(set(outl.tolist())) == noise.sum() and outl.min() == 6
    assert single.num_identities == 6 + noise.sum() and drop.num_identities == 6


def test_singleton_labels() -> None:
    assert singleton_labels(np.array([-1, 0, -1, 1])).tolist() == [2, 0, 3, 1]
    assert singleton_labels(np.array([-1, -1])).tolist() == [0, 1]


@pytest.mark.parametrize(
    "features, message",
    [
        (np.zeros((1, 4), np.float32), "at least 2 rows"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([[0.0, 0.0], [0.0, 1.0]]), "all-zero"),
    ],
)
def test_bad_features(features: np.ndarray, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        cluster_features(features)


def test_bad_config() -> None:
    with pytest.raises(ClusterError, match="eps"):
        ClusterConfig(eps=1.5)
    with pytest.raises(ClusterError, match="outliers"):
        ClusterConfig(outliers="keep")  # type: ignore[arg-type]


def sets_by_definition(nbr: np.ndarray) -> set[tuple[int, int]]:
    """R*(i) of every i, written out with Python sets."""
    k1 = nbr.shape[1] - 1
    kh = int(np.around(k1 / 2.0))

    def recip(i: int, k: int) -> set[int]:
        return {int(j) for j in nbr[i, : k + 1] if i in nbr[j, : k + 1]}

    out: set[tuple[int, int]] = set()
    for i in range(len(nbr)):
        r = recip(i, k1)
        star = set(r)
        for c in r:
            rc = recip(c, kh)
            if len(rc & r) > 2.0 / 3.0 * len(rc):
                star |= rc
        out |= {(i, j) for j in star}
    return out


@pytest.mark.parametrize("k1", [1, 2, 5, 9])
def test_expanded_reciprocal_sets_match_the_definition(k1: int) -> None:
    """The one k-reciprocal implementation, shared by the Jaccard distance and metrics.re_ranking."""
    from reidserve.reciprocal import expanded_reciprocal_sets

    x, _ = clustered(4, 8, 6, 0.6, seed=k1)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    for nbr in (np.argsort(d, axis=1, kind="stable")[:, : k1 + 1], knn(x, k1)[1]):
        rows, cols = expanded_reciprocal_sets(nbr)
        pairs = list(zip(rows.tolist(), cols.tolist(), strict=True))
        assert pairs == sorted(set(pairs)) and set(pairs) == sets_by_definition(nbr)
        assert len(pairs) > len(x)  # more than each point with itself
