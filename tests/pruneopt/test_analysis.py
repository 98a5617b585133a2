from __future__ import annotations

import math

import numpy as np
import pytest

from pruneopt.analysis import (
    bootstrap_r_star,
    compare,
    edf,
    equal_acceptance_band,
    normalization_weights,
    normalized_edf,
    population_tests,
    r_buckets,
    random_band_control,
    search_cost,
    split_half_control,
    widened_band,
)
from pruneopt.errors import PruneoptError


def test_edf_exact_values() -> None:
    e = [0.3, 0.1, 0.2, 0.2]
    # F(e) = (1/n) sum 1[e_i < e]: strict inequality
    assert edf(e, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35]).tolist() == [0, 0, 0.25, 0.25, 0.75, 0.75, 1.0]
    assert float(edf(e, 0.2)) == 0.25
    with pytest.raises(PruneoptError):
        edf([], 0.1)
    with pytest.raises(PruneoptError):
        edf([0.1, math.nan], 0.1)


def test_normalised_edf_equalises_parameter_bins() -> None:
    # 9 small models with low error, 1 large model with high error; two bins: small and large
    errors = np.array([0.1] * 9 + [0.5])
    params = np.array([100] * 9 + [200])
    w = normalization_weights(params, bins=2)
    assert w.sum() == pytest.approx(1.0)
    assert w[:9] == pytest.approx([1 / 18] * 9) and w[9] == pytest.approx(0.5)
    assert float(edf(errors, 0.3)) == 0.9  # plain EDF: the small models dominate
    assert float(normalized_edf(errors, params, 0.3, bins=2)) == pytest.approx(0.5)  # each bin counts equally
    assert float(normalized_edf(errors, np.full(10, 7), 0.3)) == pytest.approx(0.9)  # one bin: plain EDF


def test_r_buckets_are_quantiles() -> None:
    r = np.arange(100, dtype=float)
    e = r / 100
    buckets = r_buckets(e, r, 4)
    assert [b.errors.size for b in buckets] == [25, 25, 25, 25]
    assert buckets[0].median_error < buckets[-1].median_error
    assert buckets[0].r_low == 0 and buckets[-1].r_high == 99


def planted_population(n: int, r0: float, seed: int, r_lo: float = 60, r_hi: float = 240) -> tuple[np.ndarray,
                                                                                                        np.ndarray]:
    """Errors that are lowest at R = r0 (quadratic in log R) plus noise."""
    rng = np.random.default_rng(seed)
    r = np.exp(rng.uniform(np.log(r_lo), np.log(r_hi), n))
    e = 0.08 + 0.1 * (np.log(r) - np.log(r0)) ** 2 + rng.normal(0, 0.003, n)
    return e, r


def test_bootstrap_recovers_a_planted_optimal_ratio() -> None:
    e, r = planted_population(400, 120.0, seed=1)
    rs = bootstrap_r_star(e, r, top=0.1, n_boot=500, seed=0)
    assert rs.ci_low <= 120.0 <= rs.ci_high
    assert abs(rs.r_star - 120) / 120 < 0.05
    assert rs.range_low < rs.r_star < rs.range_high
    assert 0.02 <= rs.suggested_eps <= 0.5
    # seeded: identical again, different with another seed
    assert bootstrap_r_star(e, r, 0.1, 500, seed=0) == rs
    assert bootstrap_r_star(e, r, 0.1, 500, seed=1) != rs


def test_refined_population_is_cheaper_to_search() -> None:
    e, r = planted_population(400, 120.0, seed=2)
    rs = bootstrap_r_star(e, r, 0.1, 300, seed=0)
    # fresh draws from the same world, kept only inside the refined band
    e2, r2 = planted_population(4000, 120.0, seed=3)
    keep = np.abs(r2 - rs.r_star) <= 0.1 * rs.r_star
    refined = e2[keep][:400]
    c = compare(e, refined)
    assert c.threshold == pytest.approx(np.sort(e)[19])  # the 5% quantile of 400 values
    assert c.p_initial == pytest.approx(0.05)
    assert c.cost_initial == pytest.approx(20.0)
    assert c.cost_refined < c.cost_initial and c.cost_ratio < 0.5
    assert c.ks_pvalue < 1e-6 and c.median_shift < 0


def test_same_population_costs_the_same_and_ks_does_not_reject() -> None:
    e, _ = planted_population(300, 120.0, seed=4)
    e2, _ = planted_population(300, 120.0, seed=5)
    c = compare(e, e2)
    assert c.ks_pvalue > 0.01
    assert 0.3 < c.cost_ratio < 3


def test_search_cost_is_infinite_when_nothing_is_good_enough() -> None:
    p, cost = search_cost(np.array([0.5, 0.6]), 0.1)
    assert p == 0 and math.isinf(cost)
    c = compare(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.6, 0.7, 0.8]))
    assert math.isinf(c.cost_refined) and c.to_dict()["cost_refined"] is None


def test_population_tests_see_a_planted_shift_with_intervals() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.10, 0.01, 150), rng.normal(0.095, 0.01, 150)
    t = population_tests(a, b, n_boot=500, seed=0)
    assert t["mann_whitney"]["pvalue"] < 0.01 and t["ks"]["pvalue"] < 0.05
    ms = t["median_shift"]
    assert ms["low"] <= ms["estimate"] <= ms["high"] < 0
    assert [c["quantile"] for c in t["search_cost"]] == [0.05, 0.1, 0.2]
    assert all(c["ratio"]["estimate"] < 1 for c in t["search_cost"])
    assert population_tests(a, b, n_boot=500, seed=0) == t


def test_equal_acceptance_band_holds_as_many_candidates_as_the_r_star_band() -> None:
    r = np.random.default_rng(1).uniform(60, 250, 300)
    n_star = int(np.sum(np.abs(r - 120) <= 0.05 * 120))
    for seed in range(5):
        band = equal_acceptance_band(r, 120.0, 0.05, seed)
        assert band.n_in == n_star == int(band.mask(r).sum())  # continuous ratios: no ties at the edge
        assert band.center in r
    assert equal_acceptance_band(r, 120.0, 0.05, 0) == equal_acceptance_band(r, 120.0, 0.05, 0)
    assert equal_acceptance_band(r, 120.0, 0.05, 0) != equal_acceptance_band(r, 120.0, 0.05, 1)


def test_a_narrow_band_is_widened_to_a_quarter_of_the_candidates() -> None:
    r = np.random.default_rng(3).uniform(60, 250, 32)
    wide = widened_band(r, 120.0, 0.10)  # +-12 holds about 4 of 32: widened to 8
    assert wide.n_in == 8 == int(wide.mask(r).sum()) and wide.eps > 0.10
    assert widened_band(r, 120.0, 0.9).eps == 0.9  # never narrowed
    assert widened_band(r[:5], 120.0, 0.0).n_in == 3  # all but two stay outside
    # a planted ratio seen by 24 candidates, where the refined band's own +-1% would hold one of them
    e, rr = planted_population(24, 120.0, seed=4)
    c = random_band_control(e, rr, 120.0, 0.01, seed=0, n_boot=300, n_bands=100)
    assert c["r_star"]["n_in"] == c["random"]["n_in"] == 6 and c["refined_eps"] == 0.01
    assert c["r_star"]["median_shift"]["high"] < 0
    s = split_half_control(e, rr, top=0.1, eps=0.01, seed=0, n_boot=300)
    assert s["n_in"] == 4 and s["refined_eps"] == 0.01 < s["eps"]
    assert s["median_shift"] is not None


def test_controls_see_a_planted_ratio_and_not_noise() -> None:
    e, r = planted_population(400, 120.0, seed=6)
    c = random_band_control(e, r, 120.0, 0.1, seed=0, n_boot=300, n_bands=100)
    assert c["r_star"]["median_shift"]["high"] < 0  # the R* band holds the good models ...
    # ... better than most random bands of the same acceptance (those centred near 120 do as well)
    assert c["rank_p"] < 0.15
    assert c["random"]["n_in"] == c["r_star"]["n_in"] == c["band"]["n_in"]
    s = split_half_control(e, r, top=0.1, eps=0.1, seed=0, n_boot=300)
    assert s["n_fit"] == s["n_test"] == 200
    assert s["mann_whitney"]["pvalue"] < 0.01 and s["median_shift"]["high"] < 0
    noise = np.random.default_rng(7).normal(0.1, 0.01, 400)  # errors unrelated to R
    s0 = split_half_control(noise, r, top=0.1, eps=0.1, seed=0, n_boot=300)
    assert s0["mann_whitney"]["pvalue"] > 0.05
    assert random_band_control(noise, r, 120.0, 0.1, seed=0, n_boot=300, n_bands=100)["rank_p"] > 0.15
    assert s0["median_shift"]["low"] < 0 < s0["median_shift"]["high"]
    with pytest.raises(PruneoptError, match="at least 8"):
        split_half_control(noise[:6], r[:6], 0.1, 0.1)
