"""The analysis stages and the report over several regimes, on a planted population (no training)."""

from __future__ import annotations

import json

import numpy as np

from pruneopt.report import render_report
from pruneopt.search import Context, SearchConfig, stage_analysis, stage_compare
from pruneopt.store import Store


def fill(store: Store, space: str, regime: float, r_opt: float, n: int, seed: int, band: tuple[float, float] | None
         ) -> None:
    rng = np.random.default_rng(seed)
    rows, i = [], 0
    while len(rows) < n:
        r = float(np.exp(rng.uniform(np.log(60), np.log(250))))
        if band and not band[0] <= r <= band[1]:
            continue
        err = 0.1 + 0.1 * (np.log(r) - np.log(r_opt)) ** 2 + rng.normal(0, 0.002)
        rows.append({"space": space, "regime": regime, "idx": i, "seed": i, "spec": "{}", "spec_hash": str(i),
                     "macs": int(r * 1000), "params": 1000 + i, "ratio": r, "flops_fraction": regime, "err": err})
        i += 1
    store.add_candidates(rows)
    for t, row in zip(store.pending(space, regime), rows, strict=True):
        store.mark_running(t.candidate_id, "w")
        store.finish(t.candidate_id, row["err"], 1.0, "w")


def test_r_star_per_regime_and_the_report(tmp_path) -> None:
    cfg = SearchConfig(regimes=(0.25, 0.5, 0.75), samples=200, refined_samples=200, n_boot=300)
    planted = {0.25: 90.0, 0.5: 120.0, 0.75: 160.0}  # the winning ratio moves with the regime here
    with Store.open(tmp_path, cfg.to_dict()) as store:
        ctx = Context(cfg, tmp_path, store)
        for k, (regime, r_opt) in enumerate(planted.items()):
            fill(store, "initial", regime, r_opt, 200, seed=k, band=None)
            a = stage_analysis(ctx, regime)
            assert a["ci_low"] <= r_opt <= a["ci_high"] or abs(a["r_star"] - r_opt) / r_opt < 0.05
            lo, hi = a["r_star"] * (1 - a["eps"]), a["r_star"] * (1 + a["eps"])
            fill(store, "refined", regime, r_opt, 200, seed=10 + k, band=(lo, hi))
            c = stage_compare(ctx, regime)
            assert c["cost_ratio"] < 1 and c["ks_pvalue"] < 0.01
        summary = render_report(store, tmp_path)
    stars = [summary["regimes"][f"{r:g}"]["r_star"]["r_star"] for r in planted]
    assert stars == sorted(stars)  # recovered in the planted order
    report = (tmp_path / "report.md").read_text()
    for r in ("| 0.25 |", "| 0.5 |", "| 0.75 |"):
        assert r in report
    for name in ("edf_0.25.png", "edf_0.75.png", "error_vs_r_0.5.png", "rstar_by_regime.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["candidates"] == {"done": 1200}
