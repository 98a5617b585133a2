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

The honest comparison (:func:`population_tests`) adds a Mann-Whitney test, bootstrap intervals for the median shift
and for the search cost at the pooled 5/10/20% error quantiles (:mod:`pruneopt.statistics`), and two controls that
could show an effect by chance:

* :func:`random_band_control` -- a band of the same acceptance as the refined one (the same number of the initial
  population's candidates inside), centred on a random R (a seeded draw from the initial population's R's): its
  candidates against the rest of the initial population; and where the R* band's own candidates stand among many
  such random bands (:func:`equal_acceptance_band` gives the band to an engine that evaluates it as a population);
* :func:`split_half_control` -- R* estimated on one random half of the initial population, and the errors inside
  vs outside its band tested on the other half (no candidate both chooses R* and tests it).

Both controls test a band at least as wide as the refined one, widened where needed (:func:`widened_band`) to hold
a quarter of the tested candidates (at least 4): the refined band's own width, fitted to the few best models, often
holds one or two of a few dozen candidates, and a test of one candidate against the rest can see nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from .errors import PruneoptError
from .statistics import COST_QUANTILES, ks_test, mann_whitney, median_shift, search_costs


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


# -- honest comparisons and controls ------------------------------------------------------------------------------
def population_tests(initial: np.ndarray, other: np.ndarray, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95, quantiles: tuple[float, ...] = COST_QUANTILES) -> dict[str, Any]:
    """``other`` vs ``initial``: Mann-Whitney and KS p-values, the median shift (other - initial; negative:
    ``other`` is better) and the search cost at each pooled quantile, with bootstrap intervals (JSON-ready)."""
    a, b = _errors(initial, "initial errors"), _errors(other, "other errors")
    return {
        "n_initial": a.size, "n_other": b.size,
        "mann_whitney": mann_whitney(a, b).to_dict(),
        "ks": ks_test(a, b).to_dict(),
        "median_shift": median_shift(a, b, n_boot, seed, level).to_dict(),
        "search_cost": [c.to_dict() for c in search_costs(a, b, quantiles, n_boot, seed + 1, level)],
    }  # fmt: skip


@dataclass(frozen=True)
class Band:
    """``|R - center| <= eps * center``, holding ``n_in`` of a population's candidates."""

    center: float
    eps: float
    n_in: int

    def mask(self, ratios: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(ratios) - self.center) <= self.eps * self.center * (1 + 1e-12)


MIN_BAND_SHARE = 0.25  # the controls' bands hold at least this share of the tested candidates ...
MIN_BAND_IN = 4  # ... and at least this many


def widened_band(ratios: np.ndarray, center: float, eps: float, share: float = MIN_BAND_SHARE,
                 floor: int = MIN_BAND_IN) -> Band:
    """``|R - center| <= eps * center``, widened where needed so that it holds ``max(floor, ceil(share * n))`` of
    ``ratios`` (never more than all but two: a test needs candidates outside too)."""
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise PruneoptError("ratios must be a non-empty 1-D array")
    k = min(r.size - 2, max(floor, math.ceil(share * r.size)))
    width = eps
    if k >= 1:
        width = max(eps, float(np.sort(np.abs(r - center))[k - 1] / center))
    return Band(center, width, int(np.sum(Band(center, width, 0).mask(r))))


def equal_acceptance_band(ratios: np.ndarray, r_star: float, eps: float, seed: int) -> Band:
    """A band centred on a seeded random draw from ``ratios`` that holds as many of them as the R* band does (at
    least one): the relative half-width is the distance to the k-th nearest ratio."""
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise PruneoptError("ratios must be a non-empty 1-D array")
    k = max(1, int(np.sum(Band(r_star, eps, 0).mask(r))))
    center = float(r[np.random.default_rng(seed).integers(0, r.size)])
    d = np.sort(np.abs(r - center))[k - 1]
    eps_c = max(float(d / center), 1e-9)
    return Band(center, eps_c, int(np.sum(Band(center, eps_c, 0).mask(r))))


def band_split(errors: np.ndarray, inside: np.ndarray, n_boot: int, seed: int, level: float = 0.95
               ) -> dict[str, Any]:
    """Errors inside vs outside a band: sizes, medians, Mann-Whitney p and the median shift (inside - outside)
    with its interval; the tests are None when a side has fewer than two candidates."""
    e_in, e_out = errors[inside], errors[~inside]
    out: dict[str, Any] = {"n_in": int(e_in.size), "n_out": int(e_out.size), "mann_whitney": None,
                           "median_shift": None}
    if e_in.size >= 2 and e_out.size >= 2:
        out["mann_whitney"] = mann_whitney(e_out, e_in).to_dict()
        out["median_shift"] = median_shift(e_out, e_in, n_boot, seed, level).to_dict()
    return out


def random_band_control(errors: np.ndarray, ratios: np.ndarray, r_star: float, eps: float, seed: int = 0,
                        n_boot: int = 2000, n_bands: int = 200, share: float = MIN_BAND_SHARE) -> dict[str, Any]:
    """The random-R control on the initial population (see the module docstring).

    ``r_star_band``/``r_star``: the R* band (``eps`` widened by :func:`widened_band` to hold ``share`` of the
    candidates) and its inside-vs-outside test (biased towards a shift: R* was chosen from these candidates);
    ``band``/``random``: one seeded random band holding as many candidates, and its test; ``rank_p``: the fraction
    of ``n_bands`` random equal-acceptance bands whose inside-minus-outside median shift is at most the R* band's.
    """
    e, r = _errors(errors), np.asarray(ratios, dtype=np.float64)
    if r.shape != e.shape:
        raise PruneoptError("errors and ratios must have the same length")
    star = widened_band(r, r_star, eps, share)
    band = equal_acceptance_band(r, r_star, star.eps, seed)
    rng = np.random.default_rng(seed + 1)

    def shift(mask: np.ndarray) -> float:
        return float(np.median(e[mask]) - np.median(e[~mask])) if 0 < mask.sum() < e.size else math.nan

    star_shift = shift(star.mask(r))
    shifts = np.array([shift(equal_acceptance_band(r, r_star, star.eps, int(s)).mask(r))
                       for s in rng.integers(0, 2**31, size=n_bands)])
    shifts = shifts[np.isfinite(shifts)]
    rank_p = float((1 + np.sum(shifts <= star_shift)) / (1 + shifts.size)) if math.isfinite(star_shift) else None
    return {
        "band": asdict(band), "random": band_split(e, band.mask(r), n_boot, seed + 2), "refined_eps": eps,
        "r_star_band": asdict(star), "r_star": band_split(e, star.mask(r), n_boot, seed + 2),
        "n_bands": int(shifts.size), "rank_p": rank_p,
    }  # fmt: skip


def split_half_control(errors: np.ndarray, ratios: np.ndarray, top: float, eps: float, seed: int = 0,
                       n_boot: int = 2000, n_boot_rstar: int = 500, share: float = MIN_BAND_SHARE) -> dict[str, Any]:
    """R* from a seeded random half of the initial population (``top`` fraction, ``n_boot_rstar`` resamples),
    tested on the other half: errors inside its ``eps`` band (widened to hold ``share`` of the tested half, see
    :func:`widened_band`) vs outside (see :func:`band_split`)."""
    e, r = _errors(errors), np.asarray(ratios, dtype=np.float64)
    if r.shape != e.shape:
        raise PruneoptError("errors and ratios must have the same length")
    if e.size < 8:
        raise PruneoptError(f"a split-half control needs at least 8 candidates, got {e.size}")
    order = np.random.default_rng(seed).permutation(e.size)
    fit, test = order[: e.size // 2], order[e.size // 2:]
    rs = bootstrap_r_star(e[fit], r[fit], top, n_boot_rstar, seed + 1)
    band = widened_band(r[test], rs.r_star, eps, share)
    return {"r_star_half": rs.r_star, "ci_low": rs.ci_low, "ci_high": rs.ci_high, "eps": band.eps,
            "refined_eps": eps,
            "n_fit": int(fit.size), "n_test": int(test.size),
            **band_split(e[test], band.mask(r[test]), n_boot, seed + 2)}
