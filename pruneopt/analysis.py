"""Comparing populations of subnetworks by their error distributions, and finding the winning FLOPs/params ratio.

Following the design-space methodology of Radosavovic et al. (2019, 2020) and the pruning-space study of He et al.
(2023), a population is judged by its error empirical distribution function (EDF) rather than by its best member:

* ``F(e) = (1/n) sum_i 1[e_i < e]`` -- the fraction of subnetworks with error below ``e``;
* the *normalised* EDF weights each subnetwork so that every parameter-count bin of the regime counts equally
  (a population that happens to have more large models is not favoured);
* R = FLOPs / params; bucketing a regime's population by quantiles of R shows which ratios the good models share;
* a seeded bootstrap of the best models' R gives R* with a confidence interval, and the refined space keeps
  ``|R - R*| <= eps * R*``;
* refined vs initial: the EDF shift, a two-sample Kolmogorov-Smirnov test, and the *search cost*: the expected
  number of samples to draw one subnetwork at least as good as the initial space's top-5% error (``1 / F(e5)``,
  the mean of a geometric distribution).

All functions are pure NumPy on arrays of errors, ratios and parameter counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from .errors import PruneoptError


def _errors(errors: np.ndarray | list[float], name: str = "errors") -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        raise PruneoptError(f"{name} must be a non-empty 1-D array")
    if not np.all(np.isfinite(e)):
        raise PruneoptError(f"{name} must be finite")
    return e


def edf(errors: np.ndarray | list[float], at: np.ndarray | list[float] | float) -> np.ndarray:
    """``F(e) = (1/n) sum_i 1[e_i < e]`` evaluated at every point of ``at``."""
    e = np.sort(_errors(errors))
    return np.searchsorted(e, np.asarray(at, dtype=np.float64), side="left") / e.size


def weighted_edf(errors: np.ndarray, weights: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """``F(e) = sum_i w_i 1[e_i < e]`` with weights summing to one."""
    e = _errors(errors)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(e, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(w[order])])
    return cum[np.searchsorted(e[order], np.asarray(at, dtype=np.float64), side="left")]


def normalization_weights(params: np.ndarray, bins: int = 10) -> np.ndarray:
    """Weights that equalise ``bins`` equal-width parameter-count bins (each non-empty bin sums to 1/#bins)."""
    p = np.asarray(params, dtype=np.float64)
    if p.size == 0:
        raise PruneoptError("params must be non-empty")
    lo, hi = p.min(), p.max()
    idx = np.zeros(p.size, dtype=np.int64) if hi == lo else np.minimum(((p - lo) / (hi - lo) * bins).astype(
        np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    nonempty = np.count_nonzero(counts)
    return 1.0 / (nonempty * counts[idx])


def normalized_edf(errors: np.ndarray, params: np.ndarray, at: np.ndarray | float, bins: int = 10) -> np.ndarray:
    return weighted_edf(errors, normalization_weights(params, bins), at)


@dataclass(frozen=True)
class Bucket:
    r_low: float
    r_high: float
    errors: np.ndarray

    @property
    def median_error(self) -> float:
        return float(np.median(self.errors))


def r_buckets(errors: np.ndarray, ratios: np.ndarray, n_buckets: int = 4) -> list[Bucket]:
    """Split a population into ``n_buckets`` quantile buckets of R (each with its errors, for its EDF)."""
    e, r = _errors(errors), np.asarray(ratios, dtype=np.float64)
    if r.shape != e.shape:
        raise PruneoptError("errors and ratios must have the same length")
    edges = np.quantile(r, np.linspace(0, 1, n_buckets + 1))
    idx = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, n_buckets - 1)
    return [Bucket(float(edges[b]), float(edges[b + 1]), e[idx == b]) for b in range(n_buckets) if np.any(idx == b)]


@dataclass(frozen=True)
class RStar:
    """R* (the ratio the best models share) with its bootstrap confidence interval and the best models' R range."""

    r_star: float
    ci_low: float
    ci_high: float
    range_low: float  # R range of the best models (median over bootstraps of their 10th / 90th percentiles)
    range_high: float
    n_best: int
    n: int
    confidence: float
    n_boot: int
    seed: int

    @property
    def suggested_eps(self) -> float:
        """Relative half-width of the best models' R range: the refined space's default band."""
        half = max(self.r_star - self.range_low, self.range_high - self.r_star)
        return float(min(0.5, max(0.02, half / self.r_star)))

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "suggested_eps": self.suggested_eps}


def bootstrap_r_star(errors: np.ndarray, ratios: np.ndarray, top: float = 0.1, n_boot: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> RStar:
    """Bootstrap estimate of R*: in each resample, the median R of the best ``top`` fraction of models."""
    e, r = _errors(errors), np.asarray(ratios, dtype=np.float64)
    if r.shape != e.shape:
        raise PruneoptError("errors and ratios must have the same length")
    if not 0.0 < top <= 1.0:
        raise PruneoptError(f"top fraction must be in (0, 1], got {top}")
    n = e.size
    k = max(1, int(round(top * n)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    # rank by error within each resample (ties by index: stable), keep the k best
    order = np.argsort(e[idx], axis=1, kind="stable")[:, :k]
    best_r = np.take_along_axis(r[idx], order, axis=1)
    r_b = np.median(best_r, axis=1)
    lo_b, hi_b = np.quantile(best_r, 0.1, axis=1), np.quantile(best_r, 0.9, axis=1)
    a = (1 - confidence) / 2
    return RStar(
        r_star=float(np.median(r_b)),
        ci_low=float(np.quantile(r_b, a)),
        ci_high=float(np.quantile(r_b, 1 - a)),
        range_low=float(np.median(lo_b)),
        range_high=float(np.median(hi_b)),
        n_best=k, n=n, confidence=confidence, n_boot=n_boot, seed=seed,
    )


@dataclass(frozen=True)
class Comparison:
    """Refined vs initial population at one regime."""

    threshold: float  # the initial space's top-q error
    quantile: float
    p_initial: float  # F(threshold) with <=, per population
    p_refined: float
    cost_initial: float  # expected samples to draw one subnetwork with error <= threshold (1/p)
    cost_refined: float
    cost_ratio: float  # refined / initial: below 1 means the refined space is cheaper to search
    ks_statistic: float
    ks_pvalue: float
    median_shift: float  # median(refined) - median(initial): negative means refined is better
    mean_shift: float
    n_initial: int
    n_refined: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def search_cost(errors: np.ndarray, threshold: float) -> tuple[float, float]:
    """(p, expected samples) to draw one subnetwork with error <= ``threshold``; cost is inf when p is 0."""
    e = _errors(errors)
    p = float(np.mean(e <= threshold))
    return p, (1.0 / p if p > 0 else math.inf)


def compare(initial: np.ndarray, refined: np.ndarray, quantile: float = 0.05) -> Comparison:
    a, b = _errors(initial, "initial errors"), _errors(refined, "refined errors")
    threshold = float(np.quantile(a, quantile, method="inverted_cdf"))
    p_a, c_a = search_cost(a, threshold)
    p_b, c_b = search_cost(b, threshold)
    ks = sps.ks_2samp(a, b)
    return Comparison(
        threshold=threshold, quantile=quantile, p_initial=p_a, p_refined=p_b, cost_initial=c_a, cost_refined=c_b,
        cost_ratio=c_b / c_a if math.isfinite(c_b) else math.inf,
        ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue),
        median_shift=float(np.median(b) - np.median(a)), mean_shift=float(np.mean(b) - np.mean(a)),
        n_initial=a.size, n_refined=b.size,
    )
