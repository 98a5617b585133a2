"""pruneopt.statistics against hand-computed small cases and against SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pruneopt.errors import PruneoptError
from pruneopt.statistics import (
    ks_statistic,
    ks_test,
    mann_whitney,
    median_shift,
    noise_floor,
    percentile_interval,
    search_costs,
)


def test_mann_whitney_by_hand_with_ties() -> None:
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 5.0, 6.0]
    # pairs (x, y) with x > y: (3, 2); the tie (2, 2) counts one half -> U = 1.5
    mw = mann_whitney(a, b)
    assert mw.u == pytest.approx(1.5)
    assert mw.prob_superiority == pytest.approx(1 - 1.5 / 12)
    # variance with ties: n1 n2 / 12 * ((n + 1) - sum(t^3 - t) / (n (n - 1))) = 1 * (8 - 6 / 42)
    var = 3 * 4 / 12 * (8 - 6 / 42)
    z = (abs(1.5 - 6.0) - 0.5) / math.sqrt(var)
    assert mw.z == pytest.approx(z)
    assert mw.pvalue == pytest.approx(2 * sps.norm.sf(z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mann_whitney_matches_scipy_asymptotic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = np.round(rng.normal(0.1, 0.01, 40), 3)  # rounded: plenty of ties
    b = np.round(rng.normal(0.105, 0.01, 55), 3)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
    mw = mann_whitney(a, b)
    assert mw.u == pytest.approx(ref.statistic)
    assert mw.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


def test_mann_whitney_all_tied_is_no_evidence() -> None:
    mw = mann_whitney([1.0, 1.0], [1.0, 1.0, 1.0])
    assert mw.pvalue == 1.0 and mw.prob_superiority == 0.5


def test_ks_statistic_by_hand_and_scipy() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [3.5, 5.0, 6.0]
    # at e = 3 (and up to 3.5): F_a = 3/4, F_b = 0; at e = 4: F_a = 1, F_b = 1/3
    assert ks_statistic(np.array(a), np.array(b)) == pytest.approx(0.75)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=30), rng.normal(0.5, 1, size=45)
    ref = sps.ks_2samp(x, y)
    ks = ks_test(x, y)
    assert ks.statistic == pytest.approx(ref.statistic) and ks.pvalue == pytest.approx(ref.pvalue)


def test_median_shift_interval_is_seeded_and_covers_a_planted_shift() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.10, 0.01, 200), rng.normal(0.09, 0.01, 200)
    iv = median_shift(a, b, n_boot=1000, seed=1)
    assert iv.estimate == pytest.approx(np.median(b) - np.median(a))
    assert iv.low < -0.01 < iv.high and iv.high < 0
    assert median_shift(a, b, n_boot=1000, seed=1) == iv
    assert median_shift(a, b, n_boot=1000, seed=2) != iv


def test_search_cost_uses_the_pooled_threshold() -> None:
    a = np.arange(10, 20, dtype=float)  # 10..19
    b = np.arange(0, 10, dtype=float) + 0.5  # 0.5..9.5: all better
    costs = search_costs(a, b, quantiles=(0.1, 0.5), n_boot=200, seed=0)
    c10, c50 = costs
    # pooled 20 values: the 10% quantile (inverted CDF) is the 2nd smallest, 1.5; only b reaches it
    assert c10.threshold == 1.5 and c10.p_a == 0 and c10.p_b == 0.2
    assert math.isinf(c10.cost_a.estimate) and c10.cost_b.estimate == pytest.approx(5.0)
    assert c10.ratio.estimate == 0.0
    # median of the pooled values: 9.5 -> a reaches nothing, b everything
    assert c50.threshold == 9.5 and c50.p_b == 1.0 and c50.cost_b.estimate == 1.0
    d = c10.to_dict()
    assert d["cost_a"]["estimate"] is None  # inf is not JSON


def test_identical_populations_cost_the_same_within_the_interval() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=64), rng.normal(size=64)
    for c in search_costs(a, b, n_boot=1000, seed=0):
        assert c.ratio.low < 1.0 < c.ratio.high
        assert c.cost_a.low <= c.cost_a.estimate <= c.cost_a.high


def test_percentile_interval_handles_infinite_replicates() -> None:
    lo, hi = percentile_interval(np.array([1.0, 2.0, np.inf, np.inf]), 0.5)
    assert lo == 1.0 and math.isinf(hi)


def test_noise_floor_by_hand() -> None:
    specs = ["a", "a", "b", "b", "c", "c"]
    errors = [0.10, 0.12, 0.20, 0.22, 0.30, 0.30]
    nf = noise_floor(specs, [0, 1, 0, 1, 0, 1], errors)
    ss = 2 * 0.01**2 + 2 * 0.01**2 + 0.0  # squared deviations from each spec's mean
    within = math.sqrt(ss / 3)
    means = np.array([0.11, 0.21, 0.30])
    between = math.sqrt(np.var(means, ddof=1) - within**2 / 2)
    assert nf.within_sd == pytest.approx(within)
    assert nf.spec_means_sd == pytest.approx(np.std(means, ddof=1))
    assert nf.between_sd == pytest.approx(between)
    assert nf.ratio == pytest.approx(within / between)
    assert (nf.n_specs, nf.n_runs) == (3, 6)


def test_noise_floor_needs_repeats() -> None:
    with pytest.raises(PruneoptError, match="two specs"):
        noise_floor(["a", "b"], [0, 0], [0.1, 0.2])
    nf = noise_floor(["a", "a", "b", "b"], [0, 1, 0, 1], [0.1, 0.2, 0.1, 0.2])
    assert nf.between_sd == 0 and math.isinf(nf.ratio) and nf.to_dict()["ratio"] is None
