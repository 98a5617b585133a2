"""CMC / mAP / mINP under the Market-1501 protocol, and k-reciprocal re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from reidserve.metrics import (
    MetricsError,
    ReidMetrics,
    evaluate,
    evaluate_features,
    pairwise_distance,
    re_ranking,
)

# One query (pid 1, camera 0) against a gallery already listed in distance order.
#            pid  cam  dist   fate under the Market protocol
GALLERY = [
    (2, 1, 0.1),  # wrong id                      -> rank 1
    (1, 0, 0.2),  # same id, same camera          -> removed
    (1, 1, 0.3),  # true match                    -> rank 2
    (-1, 1, 0.35),  # junk                        -> removed
    (3, 2, 0.4),  # wrong id                      -> rank 3
    (1, 2, 0.5),  # true match                    -> rank 4
    (0, 1, 0.6),  # distractor                    -> rank 5
]
G_PIDS = np.array([g[0] for g in GALLERY])
G_CAMS = np.array([g[1] for g in GALLERY])
G_DIST = np.array([g[2] for g in GALLERY])


def test_single_query_by_hand() -> None:
    m = evaluate(G_DIST[None, :], [1], G_PIDS, [0], G_CAMS)
    # matches at ranks 2 and 4: AP = (1/2 + 2/4) / 2; last match at rank 4 with 2 matches: INP = 2/4
    assert m.mAP == pytest.approx(0.5)
    assert m.mINP == pytest.approx(0.5)
    assert (m.rank1, m.rank5, m.rank10, m.rank20) == (0.0, 1.0, 1.0, 1.0)
    assert m.num_valid_queries == 1


def test_gallery_order_does_not_matter() -> None:
    perm = np.random.default_rng(0).permutation(len(GALLERY))
    m = evaluate(G_DIST[None, perm], [1], G_PIDS[perm], [0], G_CAMS[perm])
    assert m.mAP == pytest.approx(0.5)
    assert m.rank1 == 0.0


def test_protocols_by_hand() -> None:
    d = G_DIST[None, :]
    # "all": the same-camera match stays -> matches at ranks 2, 3, 5 (junk still removed)
    m = evaluate(d, [1], G_PIDS, [0], G_CAMS, protocol="all")
    assert m.mAP == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert m.mINP == pytest.approx(3 / 5)
    # "cross_camera": every camera-0 item goes -> kept: 2, 1*, 3, 1*, 0 -> matches at ranks 2, 4
    m = evaluate(d, [1], G_PIDS, [0], G_CAMS, protocol="cross_camera")
    assert m.mAP == pytest.approx(0.5)
    # "same_camera": only the camera-0 gallery item, a match -> perfect
    m = evaluate(d, [1], G_PIDS, [0], G_CAMS, protocol="same_camera")
    assert (m.mAP, m.rank1, m.mINP) == (1.0, 1.0, 1.0)


def test_several_queries_skipping_those_without_match() -> None:
    q_pids = np.array([1, 4, 2, 5])
    q_cams = np.array([0, 0, 0, 1])
    g_pids = np.r_[G_PIDS, 5]
    g_cams = np.r_[G_CAMS, 1]
    d = np.tile(np.r_[G_DIST, 0.05], (4, 1))
    # an extra pid-5 camera-1 item now comes first for everyone.
    # q0 (pid 1): kept order 5, 2, 1*, 3, 1*, 0 -> matches at ranks 3 and 5: AP = (1/3 + 2/5)/2, INP = 2/5
    # q1 (pid 4): absent from the gallery -> skipped
    # q2 (pid 2): kept order 5, 2*, ... -> one match at rank 2: AP = 1/2, INP = 1/2
    # q3 (pid 5, camera 1): its only match is in its own camera -> skipped under the Market protocol
    m = evaluate(d, q_pids, g_pids, q_cams, g_cams)
    assert m.num_valid_queries == 2
    ap0, inp0 = (1 / 3 + 2 / 5) / 2, 2 / 5
    assert m.mAP == pytest.approx((ap0 + 0.5) / 2)
    assert m.mINP == pytest.approx((inp0 + 0.5) / 2)
    assert m.rank1 == 0.0 and m.rank5 == 1.0
    # with q3 counted (same-camera matches allowed) there are three valid queries
    assert evaluate(d, q_pids, g_pids, q_cams, g_cams, protocol="all").num_valid_queries == 3


def test_minp_by_hand() -> None:
    # 10 kept gallery items, matches at ranks 1, 3 and 10
    g_pids = np.array([7, 8, 7, 8, 8, 8, 8, 8, 8, 7])
    g_cams = np.ones(10, dtype=int)
    d = np.arange(10, dtype=float)[None, :]
    m = evaluate(d, [7], g_pids, [0], g_cams)
    assert m.mINP == pytest.approx(3 / 10)
    assert m.mAP == pytest.approx((1 / 1 + 2 / 3 + 3 / 10) / 3)
    assert m.rank1 == 1.0


def test_perfect_ranking() -> None:
    q_pids, g_pids = np.array([1, 2, 3]), np.array([1, 1, 2, 3, 3])
    d = (q_pids[:, None] != g_pids[None, :]).astype(float)
    m = evaluate(d, q_pids, g_pids, [0, 0, 0], [1, 2, 1, 1, 2])
    assert m.to_dict() == {
        "mAP": 1.0,
        "rank1": 1.0,
        "rank5": 1.0,
        "rank10": 1.0,
        "rank20": 1.0,
        "mINP": 1.0,
        "num_valid_queries": 3,
    }


def _reference(distmat, q_pids, g_pids, q_camids, g_camids, protocol="market", max_rank=20):
    """Straightforward per-query loop, as in the usual open-source eval_market1501."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    aps, inps, cmcs = [], [], []
    for q in range(distmat.shape[0]):
        order = indices[q]
        same_cam = g_camids[order] == q_camids[q]
        remove = {
            "market": (g_pids[order] == q_pids[q]) & same_cam,
            "cross_camera": same_cam,
            "same_camera": ~same_cam,
            "all": np.zeros_like(same_cam),
        }[protocol] | (g_pids[order] == -1)
        raw = (g_pids[order] == q_pids[q])[~remove].astype(int)
        if not raw.any():
            continue
        cum = raw.cumsum()
        last = np.max(np.where(raw == 1))
        inps.append(cum[last] / (last + 1.0))
        cmc = np.minimum(cum, 1)
        cmcs.append(np.pad(cmc, (0, max(0, max_rank - len(cmc))), mode="edge")[:max_rank])
        aps.append((cum / (np.arange(len(raw)) + 1.0) * raw).sum() / raw.sum())
    cmc = np.mean(cmcs, axis=0)
    return np.mean(aps), cmc[0], cmc[4], cmc[9], cmc[19], np.mean(inps), len(aps)


@pytest.mark.parametrize("protocol", ["market", "cross_camera", "same_camera", "all"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_loop_and_is_chunk_invariant(seed: int, protocol: str) -> None:
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(5, 60)), int(rng.integers(30, 300))
    q_pids, g_pids = rng.integers(-1, 12, nq), rng.integers(-1, 12, ng)
    q_cams, g_cams = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    d = rng.integers(0, 6, (nq, ng)).astype(np.float32)  # many ties: tie-breaking must agree too
    m = evaluate(d, q_pids, g_pids, q_cams, g_cams, chunk_size=7, protocol=protocol)
    ref = _reference(d, q_pids, g_pids, q_cams, g_cams, protocol)
    got = (m.mAP, m.rank1, m.rank5, m.rank10, m.rank20, m.mINP, m.num_valid_queries)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    other = evaluate(d, q_pids, g_pids, q_cams, g_cams, chunk_size=1000, protocol=protocol).to_dict()
    assert other == pytest.approx(m.to_dict(), rel=1e-12)


def test_errors() -> None:
    d = np.zeros((2, 3))
    with pytest.raises(MetricsError, match="q_pids must be 1-D of length 2"):
        evaluate(d, [1], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(MetricsError, match="g_camids"):
        evaluate(d, [1, 2], [1, 2, 3], [0, 0], [1, 1])
    with pytest.raises(MetricsError, match="2-D"):
        evaluate(np.zeros(3), [1], [1, 2, 3], [0], [1, 1, 1])
    with pytest.raises(MetricsError, match="no valid query"):
        evaluate(d, [7, 8], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(MetricsError, match="no valid query"):  # only same-camera matches
        evaluate(d, [1, 2], [1, 2, 3], [0, 0], [0, 0, 0])
    with pytest.raises(MetricsError, match="NaN"):
        evaluate(np.full((2, 3), np.nan), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(MetricsError, match="protocol"):
        evaluate(d, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], protocol="bogus")  # type: ignore[arg-type]
    assert issubclass(MetricsError, ValueError)


def test_pairwise_distance() -> None:
    x = np.array([[0.0, 0.0], [3.0, 4.0]])
    y = np.array([[0.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(pairwise_distance(x, y), [[0, 2], [5, np.sqrt(9 + 4)]], atol=1e-6)
    np.testing.assert_allclose(pairwise_distance(x, y, "sqeuclidean"), [[0, 4], [25, 13]], atol=1e-5)
    np.testing.assert_allclose(pairwise_distance(x[1:], y[1:], "cosine"), [[1 - 0.8]], atol=1e-6)
    with pytest.raises(MetricsError):
        pairwise_distance(x, np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------
# re-ranking
# ---------------------------------------------------------------------------------------------


def _reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The authors' implementation (Zhong et al. 2017), loops and all."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    for i in range(all_num):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        k_recip = forward[np.where(backward == i)[0]]
        expansion = k_recip
        for cand in k_recip:
            kh = int(np.around(k1 / 2.0)) + 1
            cf = initial_rank[cand, :kh]
            cb = initial_rank[cf, :kh]
            c_recip = cf[np.where(cb == cand)[0]]
            if len(np.intersect1d(c_recip, k_recip)) > 2.0 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(gallery_num)]
    jaccard = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        nz = np.where(V[i, :] != 0)[0]
        for j in nz:
            temp_min[0, inv_index[j]] += np.minimum(V[i, j], V[inv_index[j], j])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return final[:query_num, query_num:]


def _feature_dists(qf, gf):
    return pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 3, 0.5), (4, 1, 0.0)])
def test_re_ranking_matches_reference(k1: int, k2: int, lam: float) -> None:
    rng = np.random.default_rng(k1)
    centres = rng.normal(size=(6, 8))
    qf = centres[rng.integers(0, 6, 12)] + 0.6 * rng.normal(size=(12, 8))
    gf = centres[rng.integers(0, 6, 40)] + 0.6 * rng.normal(size=(40, 8))
    qg, qq, gg = _feature_dists(qf, gf)
    got = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam, chunk_size=5)
    want = _reference_re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (12, 40)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_re_ranking_keeps_a_perfect_ranking() -> None:
    rng = np.random.default_rng(1)
    centres = 10 * rng.normal(size=(5, 16))
    q_pids, g_pids = np.repeat(np.arange(5), 2), np.repeat(np.arange(5), 6)
    qf = centres[q_pids] + 0.05 * rng.normal(size=(10, 16))
    gf = centres[g_pids] + 0.05 * rng.normal(size=(30, 16))
    q_cams, g_cams = np.zeros(10, int), np.ones(30, int)
    before = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams)
    after = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, rerank=True)
    assert before.mAP == 1.0
    assert after.mAP == pytest.approx(1.0) and after.rank1 == 1.0


def test_re_ranking_shape_symmetry_and_range() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(25, 4))
    d = pairwise_distance(x, x)
    jac = re_ranking(d, d, d, k1=6, k2=3, lambda_value=0.0)  # pure Jaccard distance
    assert jac.shape == (25, 25)
    np.testing.assert_allclose(jac, jac.T, atol=1e-6)
    assert np.all(jac >= -1e-6) and np.all(jac <= 1 + 1e-6)
    np.testing.assert_allclose(np.diag(jac), jac.min(axis=1), atol=1e-6)  # closest to itself
    # lambda = 1 gives back the (row-normalised squared) original distance: same ordering
    orig = re_ranking(d[:3], d[:3, :3], d, k1=6, k2=3, lambda_value=1.0)
    np.testing.assert_array_equal(np.argsort(orig, axis=1), np.argsort(d[:3] ** 2, axis=1))


def test_re_ranking_improves_a_noisy_but_clustered_problem() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(15, 32))
    q_pids, g_pids = np.arange(15), np.repeat(np.arange(15), 8)
    qf = centres[q_pids] + 1.2 * rng.normal(size=(15, 32))
    gf = centres[g_pids] + 1.2 * rng.normal(size=(120, 32))
    args = (qf, gf, q_pids, g_pids, np.zeros(15, int), np.ones(120, int))
    plain, reranked = evaluate_features(*args).mAP, evaluate_features(*args, rerank=True).mAP
    assert plain < 0.75 and reranked > plain + 0.1


def test_re_ranking_errors() -> None:
    d = np.zeros((2, 3))
    with pytest.raises(MetricsError, match="Q x Q"):
        re_ranking(d, np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(MetricsError, match="k1"):
        re_ranking(d, np.zeros((2, 2)), np.zeros((3, 3)), k1=0)


def test_metrics_dataclass_is_frozen() -> None:
    m = ReidMetrics(0.5, 0.5, 1, 1, 1, 0.25, 2)
    with pytest.raises(AttributeError):
        m.mAP = 1.0  # type: ignore[misc]
    assert "mAP 50.00" in str(m)
