"""Two-sample statistics for comparing populations of subnetworks, and the noise floor their scores live in.

Everything is seeded and deterministic, NumPy for the arithmetic and SciPy only for the normal and Kolmogorov
distributions:

* :func:`mann_whitney` -- the Mann-Whitney U test (two-sided, normal approximation with the tie correction and a
  continuity correction; SciPy's ``mannwhitneyu(method="asymptotic")``), with the probability of superiority
  ``P(a < b) + P(a = b) / 2`` (for errors: how often a draw from ``a`` beats one from ``b``);
* :func:`ks_test` -- the two-sample Kolmogorov-Smirnov statistic ``max |F_a - F_b|`` and its two-sided p-value;
* :func:`median_shift` -- ``median(b) - median(a)`` with a bootstrap percentile interval (both samples resampled);
* :func:`search_costs` -- the expected number of draws until one candidate is at least as good as a threshold
  (``1 / p``, the mean of a geometric distribution), per population, at the pooled 5/10/20% quantile of both
  populations' errors (so that neither population sets the bar by its own order statistic), with bootstrap
  intervals for each cost and for their ratio;
* :func:`noise_floor` -- from ``(spec, seed, error)`` triples: the pooled within-spec SD (what a seed alone moves a
  score by), the SD of the spec means and the between-spec SD corrected for the noise in those means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from .errors import PruneoptError

COST_QUANTILES = (0.05, 0.1, 0.2)


def finite_array(values: Sequence[float] | np.ndarray, name: str = "sample") -> np.ndarray:
    """``values`` as a finite, non-empty 1-D float64 array (:class:`PruneoptError` otherwise)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise PruneoptError(f"{name} must be a non-empty 1-D array")
    if not np.all(np.isfinite(x)):
        raise PruneoptError(f"{name} must be finite")
    return x


def _json(d: dict[str, Any]) -> dict[str, Any]:
    """A dataclass dict with non-finite floats as None (JSON has no inf or NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@dataclass(frozen=True)
class Interval:
    """An estimate with a (bootstrap percentile) interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float

    def to_dict(self) -> dict[str, Any]:
        return _json(asdict(self))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap replicates; order statistics only (no interpolation), so
    infinite replicates (an infinite search cost) are handled."""
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [a, 1.0 - a], method="inverted_cdf")
    return float(lo), float(hi)


# -- rank tests ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MannWhitney:
    u: float  # U of the first sample: the number of pairs (x in a, y in b) with x > y, ties counting one half
    z: float
    pvalue: float  # two-sided
    prob_superiority: float  # P(x < y) + P(x = y) / 2 = 1 - U / (n_a n_b): for errors, how often a beats b
    n_a: int
    n_b: int

    def to_dict(self) -> dict[str, Any]:
        return _json(asdict(self))


def mann_whitney(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> MannWhitney:
    """Two-sided Mann-Whitney U test of ``a`` against ``b`` (ties: mid-ranks and the variance correction)."""
    x, y = finite_array(a, "first sample"), finite_array(b, "second sample")
    n1, n2 = x.size, y.size
    n = n1 + n2
    pooled = np.concatenate([x, y])
    ranks = sps.rankdata(pooled)
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    _, counts = np.unique(pooled, return_counts=True)
    ties = float(np.sum(counts.astype(np.float64) ** 3 - counts))
    var = n1 * n2 / 12.0 * ((n + 1) - (ties / (n * (n - 1)) if n > 1 else 0.0))
    mean = n1 * n2 / 2.0
    if var <= 0:
        z, p = 0.0, 1.0
    else:
        z = (abs(u - mean) - 0.5) / math.sqrt(var)
        z = max(z, 0.0)
        p = float(min(1.0, 2.0 * sps.norm.sf(z)))
    return MannWhitney(u, z, p, 1.0 - u / (n1 * n2), n1, n2)


@dataclass(frozen=True)
class KSTest:
    statistic: float
    pvalue: float
    n_a: int
    n_b: int

    def to_dict(self) -> dict[str, Any]:
        return _json(asdict(self))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """``max_e |F_a(e) - F_b(e)|`` over every observed value (the EDFs as right-continuous step functions)."""
    x, y = np.sort(finite_array(a)), np.sort(finite_array(b))
    grid = np.concatenate([x, y])
    fa = np.searchsorted(x, grid, side="right") / x.size
    fb = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(fa - fb)))


def ks_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> KSTest:
    """Two-sample Kolmogorov-Smirnov test (two-sided; exact p for small samples, asymptotic for large: SciPy's)."""
    x, y = finite_array(a, "first sample"), finite_array(b, "second sample")
    res = sps.ks_2samp(x, y)
    return KSTest(ks_statistic(x, y), float(res.pvalue), x.size, y.size)


# -- bootstrap intervals ---------------------------------------------------------------------------------------
def _resample(rng: np.random.Generator, x: np.ndarray, n_boot: int) -> np.ndarray:
    return x[rng.integers(0, x.size, size=(n_boot, x.size))]


def median_shift(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n_boot: int = 2000,
                 seed: int = 0, level: float = 0.95) -> Interval:
    """``median(b) - median(a)`` with a bootstrap percentile interval (each sample resampled on its own)."""
    x, y = finite_array(a, "first sample"), finite_array(b, "second sample")
    rng = np.random.default_rng(seed)
    xb, yb = _resample(rng, x, n_boot), _resample(rng, y, n_boot)
    reps = np.median(yb, axis=1) - np.median(xb, axis=1)
    lo, hi = percentile_interval(reps, level)
    return Interval(float(np.median(y) - np.median(x)), lo, hi, level)


@dataclass(frozen=True)
class SearchCost:
    """Draws until one subnetwork is at least as good as ``threshold`` (the pooled ``quantile``), per population."""

    quantile: float
    threshold: float
    p_a: float
    p_b: float
    cost_a: Interval  # 1 / p_a
    cost_b: Interval
    ratio: Interval  # cost_b / cost_a: below 1 means b is cheaper to search

    def to_dict(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "threshold": self.threshold, "p_a": self.p_a, "p_b": self.p_b,
                "cost_a": self.cost_a.to_dict(), "cost_b": self.cost_b.to_dict(), "ratio": self.ratio.to_dict()}


def _inverse(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(p > 0, 1.0 / np.maximum(p, 1e-300), np.inf)


def _cost_ratio(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """``(1/p_b) / (1/p_a) = p_a / p_b`` (inf when only ``p_b`` is 0; the pooled threshold never leaves both 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_b > 0, p_a / np.maximum(p_b, 1e-300), np.inf)


def _pooled_threshold(pooled: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile of each row, as an order statistic (an observed error, so some draw reaches it)."""
    return np.asarray(np.quantile(pooled, q, axis=-1, method="inverted_cdf"))


def search_costs(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                 quantiles: Sequence[float] = COST_QUANTILES, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> list[SearchCost]:
    """Search cost of both populations at each pooled error quantile, with bootstrap intervals (see the module
    docstring). A success is an error ``<=`` the threshold; the threshold is re-estimated in every resample."""
    x, y = finite_array(a, "first sample"), finite_array(b, "second sample")
    rng = np.random.default_rng(seed)
    xb, yb = _resample(rng, x, n_boot), _resample(rng, y, n_boot)
    pooled_b = np.concatenate([xb, yb], axis=1)
    out = []
    for q in quantiles:
        if not 0.0 < q < 1.0:
            raise PruneoptError(f"search-cost quantiles must be in (0, 1), got {q}")
        t = float(_pooled_threshold(np.concatenate([x, y]), q))
        pa, pb = float(np.mean(x <= t)), float(np.mean(y <= t))
        tb = _pooled_threshold(pooled_b, q)[:, None]
        pab, pbb = np.mean(xb <= tb, axis=1), np.mean(yb <= tb, axis=1)
        ca, cb = _inverse(np.array([pa]))[0], _inverse(np.array([pb]))[0]
        out.append(SearchCost(
            q, t, pa, pb,
            Interval(float(ca), *percentile_interval(_inverse(pab), level), level),
            Interval(float(cb), *percentile_interval(_inverse(pbb), level), level),
            Interval(float(_cost_ratio(np.array([pa]), np.array([pb]))[0]),
                     *percentile_interval(_cost_ratio(pab, pbb), level), level),
        ))
    return out


# -- the noise floor -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseFloor:
    """How much a seed moves a candidate's error, against how much specs differ."""

    n_specs: int
    n_runs: int
    within_sd: float  # pooled within-spec SD: sqrt(sum of squared deviations from each spec's mean / sum(n_s - 1))
    spec_means_sd: float  # SD of the spec means (holds within_sd^2 / n_s of noise)
    between_sd: float  # sqrt(max(0, var(spec means) - within_sd^2 * mean(1 / n_s))): the specs' own spread
    ratio: float  # within_sd / between_sd (inf when the specs' own spread is 0): above ~0.5, ranks are noisy

    def to_dict(self) -> dict[str, Any]:
        return _json(asdict(self))


def noise_floor(specs: Sequence[str], seeds: Sequence[int], errors: Sequence[float] | np.ndarray) -> NoiseFloor:
    """The noise floor of ``(spec, seed, error)`` triples: at least two specs, one of them run with >= 2 seeds."""
    e = finite_array(errors, "errors")
    if not len(specs) == len(seeds) == e.size:
        raise PruneoptError("specs, seeds and errors must have the same length")
    groups: dict[str, list[float]] = {}
    for spec, err in zip(specs, e, strict=True):
        groups.setdefault(str(spec), []).append(float(err))
    sizes = np.array([len(v) for v in groups.values()], dtype=np.float64)
    if len(groups) < 2 or sizes.max() < 2:
        raise PruneoptError("a noise floor needs at least two specs and one of them run with two or more seeds")
    ss = sum(float(np.sum((np.array(v) - np.mean(v)) ** 2)) for v in groups.values())
    within = math.sqrt(ss / float(np.sum(sizes - 1)))
    means = np.array([np.mean(v) for v in groups.values()])
    means_var = float(np.var(means, ddof=1))
    between = math.sqrt(max(0.0, means_var - within**2 * float(np.mean(1.0 / sizes))))
    ratio = within / between if between > 0 else math.inf
    return NoiseFloor(len(groups), int(sizes.sum()), within, math.sqrt(means_var), between, ratio)
