"""``bench/claims.py pruning``: the pooled verdicts on hand-made summaries, and a tiny real run that writes its
results, table and plot, resumes, and refuses other settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import claims  # bench/ is on pytest's pythonpath (pyproject)
import pytest
from claims_pruning import STAGE_PREDICTORS, pruning_summary

from pruneopt.store import Store


def _iv(x: float) -> dict[str, float]:
    return {"estimate": x, "low": x - 0.001, "high": x + 0.001, "level": 0.95}


def fake_summary(shift: float, half: float, global_rho: float, stage_rho: float, best: float) -> dict[str, Any]:
    buckets = [{"name": "global R", "cv_spearman": global_rho}, {"name": "per-stage widths", "cv_spearman": stage_rho},
               {"name": "params", "cv_spearman": 0.0}]
    stats = {"refined_vs_initial": {"median_shift": _iv(shift), "mann_whitney": {"pvalue": 0.5}, "ks": {"pvalue": 0.5},
                                    "search_cost": [{"quantile": 0.1, "ratio": _iv(1.0)}]},
             "split_half": {"median_shift": _iv(half), "mann_whitney": {"pvalue": 0.5}},
             "random_band": {"random": {"median_shift": _iv(0.0)}, "rank_p": 0.5}, "buckets": buckets}
    return {"statistics": {"0.5": stats}, "regimes": {"0.5": {"r_star": {"r_star": 150.0}, "best_refined": best}},
            "finals": {}, "noise_floor": None}


def test_verdicts_pool_the_seeds() -> None:
    runs = {"global": {0: fake_summary(-0.010, 0.002, 0.1, 0.5, 0.10), 1: fake_summary(-0.012, -0.003, 0.2, 0.6, 0.11),
                       2: fake_summary(-0.011, 0.001, 0.1, 0.55, 0.12)},
            "stage": {0: fake_summary(0, 0, 0, 0, 0.09), 1: fake_summary(0, 0, 0, 0, 0.10),
                      2: fake_summary(0, 0, 0, 0, 0.11)}}
    s = pruning_summary(runs, 0.5)
    by = {c["claim"]: c for c in s["claims"]}
    assert by["refined space better"]["verdict"].startswith("yes")
    assert by["refined space better"]["interval"]["diff"] == pytest.approx(-0.011)
    assert by["R* shared by winners"]["verdict"] == "cannot tell"
    assert by["per-stage beats global"]["verdict"].startswith("yes")
    assert by["per-stage beats global"]["interval"]["diff"] == pytest.approx((0.4 + 0.4 + 0.45) / 3)
    assert by["per-stage refinement beats global"]["verdict"].startswith("yes")  # 0.01 better on every seed
    assert s["seeds"][1]["best_stage"] == "per-stage widths"


def test_per_stage_claim_compares_fixed_predictors_not_each_seeds_best() -> None:
    def with_rhos(rhos: dict[str, float]) -> dict[str, Any]:
        s = fake_summary(0.0, 0.0, 0.0, 0.0, 0.1)
        s["statistics"]["0.5"]["buckets"] = [{"name": n, "cv_spearman": v} for n, v in rhos.items()]
        return s

    # each seed's best per-stage predictor beats global R by ~0.45, but never the same one: no fixed predictor does
    noisy = [{"global R": -0.25, "per-stage widths": 0.2, "per-stage R": -0.4, "per-stage params share": -0.6},
             {"global R": -0.25, "per-stage widths": -0.5, "per-stage R": 0.3, "per-stage params share": 0.2},
             {"global R": -0.2, "per-stage widths": 0.1, "per-stage R": -0.3, "per-stage params share": 0.3}]
    s = pruning_summary({"global": {i: with_rhos(r) for i, r in enumerate(noisy)}}, 0.5)
    claim = {c["claim"]: c for c in s["claims"]}["per-stage beats global"]
    assert claim["verdict"] == "cannot tell" and set(claim["per_predictor"]) == set(STAGE_PREDICTORS)
    assert "Bonferroni" in claim["measure"] and claim["per_predictor"]["per-stage R"]["lo"] < 0
    worse = [{"global R": 0.5 + d, "per-stage widths": 0.1, "per-stage R": 0.0 + d, "per-stage params share": 0.1}
             for d in (0.0, 0.01, 0.02)]
    s = pruning_summary({"global": {i: with_rhos(r) for i, r in enumerate(worse)}}, 0.5)
    assert {c["claim"]: c for c in s["claims"]}["per-stage beats global"]["verdict"] == "no: global R predicts better"


def fake_run_search(cfg: Any, out: Path, **_: Any) -> dict[str, Any]:
    """A search without training: real specs of the space, errors planted on R (resumable through the store)."""
    import numpy as np

    from pruneopt.models import get_arch
    from pruneopt.report import render_report
    from pruneopt.search import Context, stage_analysis
    from pruneopt.space import PruningSpace, RatioConstraint, Regime

    c = cfg.common
    space = PruningSpace(get_arch("resnet20").default_spec(in_chans=1), input_hw=(28, 28))
    rng = np.random.default_rng(c.seed)
    with Store.open(out, cfg.to_dict()) as store:
        def add(name: str, sp: PruningSpace, n: int) -> None:
            smp = sp.sample(n, Regime(c.regimes[0], c.band), seed=c.seed)
            store.add_candidates([{"space": name, "regime": c.regimes[0], "idx": i, "seed": 0,
                                   "spec": smp.spec(i).to_json(), "spec_hash": smp.spec(i).hash(),
                                   "macs": int(smp.stats.macs[i]), "params": int(smp.stats.params[i]),
                                   "ratio": float(smp.stats.ratio[i]), "flops_fraction": 0.5} for i in range(n)])
            for job in store.pending(name):
                r = next(x["ratio"] for x in store.rows(name, status=None) if x["id"] == job.candidate_id)
                store.mark_running(job.candidate_id, "w")
                store.finish(job.candidate_id, 0.1 + 0.05 * abs(np.log(r / 180)) + rng.normal(0, 0.003), 1.0, "w")

        add("initial", space, c.samples)
        a = stage_analysis(Context(cfg, out, store), c.regimes[0])
        add("refined", space.with_constraints(RatioConstraint(a["r_star"], a["eps"])), c.refined_samples)
        return render_report(store, out)


def test_protocol_writes_resumes_and_refuses_other_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import claims_pruning

    import pruneopt.search

    parent = {"val_accuracy": 0.93, "test_accuracy": 0.92, "seconds": 1.0}
    monkeypatch.setattr(claims_pruning, "_parent", lambda out, s, threads: parent)
    monkeypatch.setattr(pruneopt.search, "run_search", fake_run_search)
    out = tmp_path / "claims"
    args = ["pruning", "--out", str(out), "--seeds", "0,1,2", "--samples", "40", "--refined-samples", "20",
            "--parent-epochs", "1", "--band", "0.02"]
    claims.main(args)
    for name in ("results.json", "table.md", "pruning.png", "search_s0/report.md", "search_s2/summary.json"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    claims_ = results["summary"]["claims"]
    assert [c["claim"] for c in claims_] == ["refined space better", "R* shared by winners", "per-stage beats global"]
    assert claims_[0]["interval"]["n"] == claims_[2]["interval"]["n"] == 3  # the split half may lack in-band ones
    assert claims_[0]["verdict"] == "yes: refined is better"  # planted: the band around R* holds better models
    assert set(results["summary"]["seeds"]) == {"0", "1", "2"}
    assert all(r["best_stage"] is not None for r in results["summary"]["seeds"].values())
    table = (out / "table.md").read_text()
    assert "Verdicts" in table and "R* shared by winners" in table and "val accuracy 0.9300" in table
    claims.main(args)  # resumes: nothing is evaluated again, the same figures
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]
    with Store.open(out / "search_s0", None, readonly=True) as store:
        assert set(store.evaluation_counts().values()) == {1} and len(store.evaluation_counts()) == 60
    with pytest.raises(SystemExit, match="other settings"):
        claims.main([*args[:-1], "0.03"])
