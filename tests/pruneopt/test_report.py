"""The analysis stages and the report over several regimes, on a planted population (no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest

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


def test_report_states_what_it_can_tell(tmp_path, monkeypatch) -> None:
    """Noise floor, tests with intervals, both controls, the bucket table, val size and final labels."""
    from pruneopt import baselines
    from pruneopt.models import get_arch
    from pruneopt.report_statistics import final_labels
    from pruneopt.space import PruningSpace, Regime
    from pruneopt.statistics import noise_floor

    space = PruningSpace(get_arch("resnet20").default_spec(in_chans=1), input_hw=(28, 28))
    samples = space.sample(80, Regime(0.5, 0.02), seed=0)
    cfg = SearchConfig(regimes=(0.5,), samples=60, refined_samples=20, n_boot=200, val_size=None)
    rng = np.random.default_rng(0)
    rows, errors = [], []
    for i in range(80):
        spec, r = samples.spec(i), float(samples.stats.ratio[i])
        space_name, idx = ("initial", i) if i < 60 else ("noise", i - 60)
        # the noise population: 4 "specs" (hashes) of 5 runs each, as the engine records seeds of one spec
        rows.append({"space": space_name, "regime": 0.5, "idx": idx, "seed": idx, "spec": spec.to_json(),
                     "spec_hash": spec.hash() if space_name == "initial" else f"s{idx // 5}",
                     "macs": int(samples.stats.macs[i]), "params": int(samples.stats.params[i]), "ratio": r,
                     "flops_fraction": 0.5})
        errors.append(0.1 + 0.05 * abs(np.log(r / 180.0)) + rng.normal(0, 0.003))
    with Store.open(tmp_path, cfg.to_dict()) as store:
        store.add_candidates(rows)
        for job, err in zip(store.pending(), errors, strict=True):
            store.mark_running(job.candidate_id, "w")
            store.finish(job.candidate_id, float(err), 1.0, "w")
        ctx = Context(cfg, tmp_path, store)
        stage_analysis(ctx, 0.5)
        fill(store, "refined", 0.5, 180.0, 20, seed=3, band=None)
        final = {"flops_fraction": 0.5, "macs": 1, "params": 1, "ratio": 1.0, "val_error": 0.1, "test_error": 0.1}
        store.set_stage("final:winner", final)
        store.set_stage("final:mystery", final)
        monkeypatch.setattr(baselines, "FINAL_LABELS", {"winner": "the winner"}, raising=False)
        summary = render_report(store, tmp_path)
        noise = store.rows("noise")
    want = noise_floor([r["spec_hash"] for r in noise], [r["seed"] for r in noise], [r["error"] for r in noise])
    assert summary["noise_floor"] == want.to_dict() and want.n_specs == 4
    assert summary["final_labels"] == {"mystery": "mystery", "winner": "the winner"}
    assert final_labels(["winner"]) == {"winner": "the winner"}
    st = summary["statistics"]["0.5"]
    assert st["refined_vs_initial"]["n_initial"] == 60 and len(st["refined_vs_initial"]["search_cost"]) == 3
    rb = st["random_band"]
    assert st["split_half"]["n_fit"] == 30 and rb["random"]["n_in"] == rb["r_star"]["n_in"]
    assert {b["name"] for b in st["buckets"]} == {"global R", "params", "per-stage R", "per-stage widths",
                                                 "per-stage params share"}
    assert st["control_vs_initial"] is None  # no engine-evaluated control population here
    report = (tmp_path / "report.md").read_text()
    q1, q3 = np.percentile(errors[:60], [25, 75])  # the initial population
    assert st["initial_iqr_sd"] == pytest.approx((q3 - q1) / 1.349)
    assert f"robust SD (IQR / 1.35) {st['initial_iqr_sd']:.4f}; the seed's SD is" in report
    for text in ("Validation images scoring each candidate: full split.", "Noise floor (4 specs, 20 runs)",
                 "| refined vs initial | 60 vs 20 |", "split half: R*", "random-R band, equal acceptance",
                 "| per-stage R |", "`winner` = the winner"):
        assert text in report, text
    assert json.loads((tmp_path / "summary.json").read_text())["statistics"]["0.5"]["buckets"]


def test_report_without_a_noise_population_says_not_measured(tmp_path) -> None:
    cfg = SearchConfig(regimes=(0.5,), samples=20, refined_samples=20, n_boot=100, val_size=2000)
    with Store.open(tmp_path, cfg.to_dict()) as store:
        fill(store, "initial", 0.5, 120.0, 20, seed=0, band=None)
        stage_analysis(Context(cfg, tmp_path, store), 0.5)
        summary = render_report(store, tmp_path)
    assert summary["noise_floor"] is None and summary["val_size"] == 2000
    assert summary["statistics"]["0.5"]["buckets"] is None  # the planted rows have no real specs
    report = (tmp_path / "report.md").read_text()
    assert "Noise floor: not measured" in report and "Validation images scoring each candidate: 2000." in report


def test_final_rows_say_which_final_is_outside_the_band_and_keep_the_table_intact() -> None:
    from pruneopt.baselines import FINAL_LABELS
    from pruneopt.tasks.base import final_rows

    fig = {"flops_fraction": 0.5, "test_error": 0.2}
    summary = {"finals": {"winner": {**fig, "in_final_band": True},
                          "initial_best": {**fig, "in_final_band": True, "same_as": "winner"},
                          "uniform": {**fig, "flops_fraction": 0.508, "in_final_band": False},
                          "bn_gamma": {**fig, "in_final_band": True}}}
    names = [name for name, _ in final_rows(summary)]
    assert names[0] == FINAL_LABELS["winner"] and names[1].endswith("(= the winner)")
    assert "outside the final band" in names[2] and names[2].startswith(FINAL_LABELS["uniform"])
    assert "outside" not in names[3] and len(names) == 4
    assert not any("|" in label for label in FINAL_LABELS.values())  # labels sit in Markdown table cells
