"""The statistics section of a search's report: what the comparisons can tell, computed from the store alone.

Per regime (:func:`regime_statistics`): Mann-Whitney and KS p-values, bootstrap intervals for the median shift and
the search cost at the pooled 5/10/20% quantiles (refined vs initial, and a ``control_random_r`` population vs
initial where the engine evaluated one), the random-R control and the split-half control
(:mod:`pruneopt.analysis`), and the bucket predictor table (:mod:`pruneopt.buckets`). Per run: the noise floor from
the ``noise`` population (a few specs, each evaluated with a few seeds; "not measured" without one), the validation
size and the labels of the final models (``pruneopt.baselines.FINAL_LABELS`` where it exists).

Every figure is seeded from the run's seed, so re-rendering a report gives the same numbers.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from . import baselines
from .analysis import population_tests, random_band_control, split_half_control
from .buckets import predictor_table_from_specs, predictors
from .errors import PruneoptError
from .models import ModelSpec
from .seeds import derive_seed
from .statistics import mann_whitney, median_shift, noise_floor
from .store import Store

log = logging.getLogger(__name__)

CONTROL_POPULATION = "control_random_r"  # an engine-evaluated population in a random-R equal-acceptance band
NOISE_POPULATION = "noise"  # a few specs x a few seeds
IQR_PER_SD = 1.349  # the interquartile range of a normal distribution, in SDs


def final_labels(keys: list[str]) -> dict[str, str]:
    """Each final model's label: ``pruneopt.baselines.FINAL_LABELS`` where it names one, else the key."""
    labels: dict[str, str] = getattr(baselines, "FINAL_LABELS", None) or {}
    return {k: str(labels.get(k, k)) for k in keys}


def input_hw_of(cfg: dict[str, Any], parent: dict[str, Any] | None) -> tuple[int, int] | None:
    """The input size FLOPs were counted at: the parent record's input, else the config's ``size``, else None
    (the architecture's default)."""
    size = ((parent or {}).get("input") or {}).get("size") or cfg.get("size")
    return (int(size[0]), int(size[1])) if size else None


def noise_summary(store: Store) -> dict[str, Any] | None:
    """The noise floor of the ``noise`` population (all regimes), or None when there is none to measure."""
    rows = store.rows(NOISE_POPULATION)
    if not rows:
        return None
    try:
        nf = noise_floor([r["spec_hash"] for r in rows], [r["seed"] for r in rows], [r["error"] for r in rows])
    except PruneoptError as exc:
        log.info("no noise floor: %s", exc)
        return None
    return nf.to_dict()


def _bucket_table(rows: list[dict[str, Any]], hw: tuple[int, int] | None, seed: int) -> list[dict[str, Any]] | None:
    try:
        specs = [ModelSpec.from_json(r["spec"]) for r in rows]
        table = predictor_table_from_specs(specs, hw)
        return [p.to_dict() for p in predictors([r["error"] for r in rows], table, seed=seed)]
    except (PruneoptError, ValueError, KeyError, TypeError) as exc:  # e.g. specs a planted test left empty
        log.info("no bucket table: %s", exc)
        return None


def regime_statistics(store: Store, cfg: dict[str, Any], regime: float, r_star: dict[str, Any] | None,
                      hw: tuple[int, int] | None) -> dict[str, Any]:
    """Every test of one regime (JSON-ready; a part that cannot be computed is None)."""
    seed = derive_seed(cfg.get("seed", 0), "statistics", regime)
    n_boot = int(cfg.get("n_boot", 2000))
    init = store.rows("initial", regime)
    ref = store.rows("refined", regime)
    ctrl = store.rows(CONTROL_POPULATION, regime)
    e_i = np.array([r["error"] for r in init])
    e_r = np.array([r["error"] for r in ref])
    e_c = np.array([r["error"] for r in ctrl])
    out: dict[str, Any] = {"initial_sd": float(np.std(e_i, ddof=1)) if e_i.size > 1 else None,
                           # robust to the few collapsed candidates a population can hold (error near chance)
                           "initial_iqr_sd": float(np.subtract(*np.percentile(e_i, [75, 25])) / IQR_PER_SD)
                           if e_i.size > 3 else None,
                           "refined_vs_initial": None, "control_vs_initial": None, "refined_vs_control": None,
                           "random_band": None, "split_half": None, "buckets": None}
    if e_i.size >= 2 and e_r.size >= 2:
        out["refined_vs_initial"] = population_tests(e_i, e_r, n_boot, seed)
    if e_i.size >= 2 and e_c.size >= 2:
        out["control_vs_initial"] = population_tests(e_i, e_c, n_boot, seed)
    if e_c.size >= 2 and e_r.size >= 2:
        out["refined_vs_control"] = {"mann_whitney": mann_whitney(e_c, e_r).to_dict(),
                                     "median_shift": median_shift(e_c, e_r, n_boot, seed).to_dict()}
    if r_star and e_i.size >= 8:
        ratios = np.array([r["ratio"] for r in init])
        out["random_band"] = random_band_control(e_i, ratios, r_star["r_star"], r_star["eps"], seed, n_boot)
        out["split_half"] = split_half_control(e_i, ratios, float(cfg.get("top", 0.1)), r_star["eps"], seed, n_boot)
    if e_i.size >= 10:
        out["buckets"] = _bucket_table(init, hw, seed)
    return out


# -- Markdown ---------------------------------------------------------------------------------------------------
def _num(x: Any, spec: str = ".4f", none: str = "-") -> str:
    """``x`` formatted; ``none`` for None (a search cost's None is an infinite cost: JSON has no inf)."""
    if x is None:
        return none
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    return format(x, spec)


def _iv(d: dict[str, Any] | None, spec: str = "+.4f", none: str = "-") -> str:
    """``estimate [low, high]`` (no interval: ``-``)."""
    if not d:
        return "-"
    return f"{_num(d['estimate'], spec, none)} [{_num(d['low'], spec, none)}, {_num(d['high'], spec, none)}]"


def _split_line(name: str, d: dict[str, Any] | None) -> str:
    if not d or d.get("mann_whitney") is None:
        return f"| {name} | {(d or {}).get('n_in', '-')} | {(d or {}).get('n_out', '-')} | - | - |"
    return (f"| {name} | {d['n_in']} | {d['n_out']} | {_iv(d['median_shift'])} | "
            f"{_num(d['mann_whitney']['pvalue'], '.3g')} |")


def _tests_lines(label: str, t: dict[str, Any]) -> list[str]:
    costs = "; ".join(
        f"{100 * c['quantile']:.0f}%: {_num(c['cost_a']['estimate'], '.1f', 'inf')} -> "
        f"{_num(c['cost_b']['estimate'], '.1f', 'inf')} (ratio {_iv(c['ratio'], '.2f', 'inf')})"
        for c in t["search_cost"])
    return [f"| {label} | {t['n_initial']} vs {t['n_other']} | {_iv(t['median_shift'])} | "
            f"{_num(t['mann_whitney']['pvalue'], '.3g')} | {_num(t['ks']['pvalue'], '.3g')} | {costs} |"]


def statistics_lines(s: dict[str, Any]) -> list[str]:
    """The report's statistics section for the summary ``s`` (see :func:`pruneopt.report.summarize`)."""
    lines = ["## What the comparisons can tell", ""]
    val = s.get("val_size")
    lines.append(f"Validation images scoring each candidate: {val if val is not None else 'full split'}.")
    nf = s.get("noise_floor")
    if nf:
        lines.append(f"Noise floor ({nf['n_specs']} specs, {nf['n_runs']} runs): a seed alone moves a candidate's "
                     f"error by SD {_num(nf['within_sd'])}; the specs' own spread is SD {_num(nf['between_sd'])} "
                     f"(ratio {_num(nf['ratio'], '.2f')}; the SD of the spec means is {_num(nf['spec_means_sd'])}).")
    else:
        lines.append("Noise floor: not measured (no `noise` population of specs evaluated with several seeds).")
    lines += ["", "Median shift: median(other) - median(initial) error, negative = better, with its 95% bootstrap "
              "interval. Search cost: expected draws until one candidate's error is at or below the pooled "
              "5/10/20% quantile of both populations (ratio other / initial, 95% bootstrap interval; below 1 = "
              "cheaper).", ""]
    for key, st in (s.get("statistics") or {}).items():
        lines += [f"### Regime {key}", ""]
        if st.get("initial_sd") is not None and st.get("initial_iqr_sd") is not None:
            seed_sd = f"; the seed's SD is {_num(nf['within_sd'] / st['initial_iqr_sd'], '.2f')} of it" if nf else ""
            lines += [f"Initial population's spread: SD {_num(st['initial_sd'])}, robust SD (IQR / 1.35) "
                      f"{_num(st['initial_iqr_sd'])}{seed_sd}.", ""]
        lines += ["| comparison | n | median shift [95% CI] | Mann-Whitney p | KS p | search cost initial -> other |",
                  "|---|---|---|---|---|---|"]
        for label, name in (("refined vs initial", "refined_vs_initial"), ("random-R control vs initial",
                                                                         "control_vs_initial")):
            if st.get(name):
                lines += _tests_lines(label, st[name])
        rc = st.get("refined_vs_control")
        if rc:
            lines.append(f"| refined vs random-R control | - | {_iv(rc['median_shift'])} | "
                         f"{_num(rc['mann_whitney']['pvalue'], '.3g')} | - | - |")
        lines += ["", "Controls on the initial population (inside vs outside a band: median shift inside - outside; "
                  "each band is the refined one's, widened where needed to hold a quarter of the tested candidates, "
                  "at least 4):", "", "| band | n in | n out | median shift [95% CI] | Mann-Whitney p |",
                  "|---|---|---|---|---|"]
        rb, sh = st.get("random_band"), st.get("split_half")
        if rb:
            star = rb["r_star_band"]
            lines.append(_split_line(f"R* band (R* {star['center']:.1f} +-{star['eps']:.1%}, chosen on these "
                                     "candidates)", rb["r_star"]))
            lines.append(_split_line(f"random-R band, equal acceptance (R {rb['band']['center']:.1f} "
                                     f"+-{rb['band']['eps']:.1%})", rb["random"]))
        if sh:
            lines.append(_split_line(f"split half: R* {sh['r_star_half']:.1f} +-{sh['eps']:.1%} from {sh['n_fit']}, "
                                     f"tested on {sh['n_test']}", sh))
        if rb and rb.get("rank_p") is not None:
            lines += ["", f"{rb['rank_p']:.2f} of {rb['n_bands']} random equal-acceptance bands hold candidates at "
                      "least as good (median shift) as the R* band does."]
        if st.get("buckets"):
            lines += ["", "Which structure predicts error (initial population; Spearman rho of 5-fold "
                      "out-of-fold predictions of a linear model on the ranks, one-sided permutation p; best single "
                      "component with a permutation p corrected for the number of components):", "",
                      "| predictor | CV rho | p | best component | rho | p (corrected) |", "|---|---|---|---|---|---|"]
            for b in st["buckets"]:
                lines.append(f"| {b['name']} | {_num(b['cv_spearman'], '+.2f')} | {_num(b['cv_pvalue'], '.3g')} | "
                             f"{b['best_component']} | {_num(b['spearman'], '+.2f')} | "
                             f"{_num(b['spearman_pvalue'], '.3g')} |")
        lines.append("")
    labels = s.get("final_labels") or {}
    if labels:
        lines += ["Final models: " + "; ".join(f"`{k}` = {v}" for k, v in labels.items()) + ".", ""]
    return lines
