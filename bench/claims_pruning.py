"""The ``pruning`` protocol of ``bench/claims.py``: do the pruning-space claims hold on Fashion-MNIST?

One well-trained resnet20 parent (trained once, cached in ``OUT/parent``), then one search per seed at one FLOPs
regime (``OUT/search_sSEED``, each a normal resumable ``pruneopt search`` run through
:func:`pruneopt.search.run_search`, so every engine default -- common random numbers, bands, baselines -- applies).
Each run's report carries the per-regime statistics (:mod:`pruneopt.report_statistics`); this module pools them over
seeds into one verdict per claim, each on a 95% paired t interval over seeds:

* **refined space better** -- median(refined) - median(initial) error per seed;
* **R* shared by winners** -- on held-out halves (split-half control): median error inside R*'s band minus
  outside, per seed; with each seed's R* and the random-R control beside it;
* **per-stage beats global** -- the cross-validated Spearman rho of each fixed per-stage predictor (per-stage R,
  widths, parameter shares) minus that of the global R, per seed (from the bucket predictor table), on intervals
  Bonferroni-corrected for the three; and, with ``--refine-by global,stage`` (an engine that has ``refine_by``),
  median(stage-refined) - median(global-refined) per seed.

Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/pruning.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from claims_cells import int_list
from claims_stats import markdown_table, paired_interval, verdict

from pruneopt.common.files import atomic_write, atomic_write_json
from pruneopt.common.threads import torch_threads

__all__ = ["SMOKE", "PruningSettings", "add_pruning_parser", "protocol_pruning", "pruning_summary"]

STAGE_PREDICTORS = ("per-stage R", "per-stage widths", "per-stage params share")


@dataclass(frozen=True)
class PruningSettings:
    """Everything the pruning protocol depends on (saved in ``OUT/settings.json`` and results.json)."""

    arch: str = "resnet20"
    data: str = "fashion-mnist"
    parent_epochs: int = 12
    train_limit: int | None = None
    regime: float = 0.5
    band: float = 0.01
    samples: int = 32
    refined_samples: int = 32
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune_steps: int = 60
    val_size: int | None = None  # None: the full validation split
    final_epochs: int = 1
    refine_by: tuple[str, ...] = ("global",)
    force: bool = False  # search on a parent near chance (the smoke settings' tiny parent is)


# plumbing only: a parent of one epoch on 2,000 images is near chance, so its figures mean nothing
SMOKE = PruningSettings(parent_epochs=1, train_limit=2000, samples=10, refined_samples=10, seeds=(0, 1),
                        finetune_steps=4, val_size=200, final_epochs=1, force=True)


def _parent(out: Path, s: PruningSettings, threads: int) -> dict[str, Any]:
    """Train the parent once into ``OUT/parent`` (the parent ``pruneopt search --seed 0`` would train, with
    ``parent_epochs``; checkpointed every epoch in ``OUT/parent_training.pt``, so a killed run resumes) and record
    its validation and test accuracy in ``OUT/parent.json``."""
    import torch

    from pruneopt.checkpoint import save_subnet
    from pruneopt.models import build
    from pruneopt.search_config import SearchConfig
    from pruneopt.seeds import derive_seed
    from pruneopt.tasks.classification import TASK
    from pruneopt.train import TrainConfig, top1_error, train

    info = out / "parent.json"
    if info.is_file() and (out / "parent" / "weights.safetensors").is_file():
        return dict(json.loads(info.read_text()))
    cfg = SearchConfig(arch=s.arch, data=s.data, seed=0, parent_epochs=s.parent_epochs, train_limit=s.train_limit)
    print(f"training the parent ({s.arch}, {s.parent_epochs} epochs) on {s.data}", flush=True)
    t0 = time.perf_counter()
    with torch_threads(threads):
        feed = TASK.feed(cfg, "cpu", 0)
        train_split, val, test = TASK.data(cfg, None).load()
        torch.manual_seed(derive_seed(0, "init"))
        model = build(TASK.source(cfg).spec)
        sec = cfg.section
        train(model, train_split, TrainConfig(epochs=sec.parent_epochs, batch_size=sec.batch_size, lr=sec.parent_lr),
              derive_seed(0, "parent"), feed=feed, checkpoint=out / "parent_training.pt")  # resumes per epoch
        result = {"val_accuracy": 1 - top1_error(model, val, feed=feed),
                  "test_accuracy": 1 - top1_error(model, test, feed=feed), "seconds": time.perf_counter() - t0}
    save_subnet(model, out / "parent", TASK.preprocess(cfg))
    atomic_write_json(info, result)
    print(f"parent: val accuracy {result['val_accuracy']:.4f}, test {result['test_accuracy']:.4f}", flush=True)
    return result


def _search(out: Path, s: PruningSettings, seed: int, arm: str, workers: int, threads: int) -> dict[str, Any]:
    """One search (resumed when its folder holds one); returns its summary."""
    from pruneopt.search import run_search
    from pruneopt.search_config import SearchConfig

    extra = {} if arm == "global" else {"refine_by": arm}  # an engine without refine_by refuses it in one line
    cfg = SearchConfig(arch=s.arch, data=s.data, regimes=(s.regime,), band=s.band, samples=s.samples,
                       refined_samples=s.refined_samples, seed=seed, parent=str((out / "parent").resolve()),
                       train_limit=s.train_limit, finetune_steps=s.finetune_steps, val_size=s.val_size,
                       final_epochs=s.final_epochs, **extra)
    name = f"search_s{seed}" if arm == "global" else f"search_s{seed}_{arm}"
    print(f"search {name}", flush=True)
    return run_search(cfg, out / name, workers=workers, threads=threads, show_progress=False, echo=True,
                      force=s.force)


# -- pooling over seeds ---------------------------------------------------------------------------------------------
def _seed_row(summary: dict[str, Any], regime: str) -> dict[str, Any]:
    st = summary["statistics"][regime]
    rv = st.get("refined_vs_initial") or {}
    sh, rb = st.get("split_half") or {}, st.get("random_band") or {}
    buckets = {b["name"]: b for b in st.get("buckets") or []}
    stage = [buckets[n] for n in STAGE_PREDICTORS if n in buckets]
    best_stage = max(stage, key=lambda b: b["cv_spearman"]) if stage else None
    cost10 = next((c for c in rv.get("search_cost", []) if abs(c["quantile"] - 0.1) < 1e-9), None)
    return {
        "r_star": summary["regimes"][regime]["r_star"],
        "median_shift": rv.get("median_shift"), "mwu_p": (rv.get("mann_whitney") or {}).get("pvalue"),
        "ks_p": (rv.get("ks") or {}).get("pvalue"), "cost_ratio_10": (cost10 or {}).get("ratio"),
        "split_half_shift": sh.get("median_shift"), "split_half_p": (sh.get("mann_whitney") or {}).get("pvalue"),
        "random_band_shift": (rb.get("random") or {}).get("median_shift"), "random_band_rank_p": rb.get("rank_p"),
        "global_rho": (buckets.get("global R") or {}).get("cv_spearman"),
        "best_stage": best_stage["name"] if best_stage else None,
        "best_stage_rho": best_stage["cv_spearman"] if best_stage else None,
        "buckets": list(buckets.values()), "noise_floor": summary.get("noise_floor"),
        "finals": {k: v.get("test_error") for k, v in (summary.get("finals") or {}).items()},
    }  # fmt: skip


def _interval(values: list[float | None], level: float = 0.95) -> dict[str, Any] | None:
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    return paired_interval(v, [0.0] * len(v), level) if v else None


def _stage_claim(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-stage vs global R: each fixed per-stage predictor's CV rho minus global R's, per seed, on a paired t
    interval at the Bonferroni level for the number of predictors. (The best predictor *of each seed* would be a
    biased pick: the max of three noisy rhos.) "yes" when some interval lies above 0, "no" when all lie below."""
    level = 1 - 0.05 / len(STAGE_PREDICTORS)
    rhos = [{b["name"]: b.get("cv_spearman") for b in r["buckets"]} for r in rows]
    per: dict[str, dict[str, Any]] = {}
    for name in STAGE_PREDICTORS:
        iv = _interval([None if by.get(name) is None or by.get("global R") is None else by[name] - by["global R"]
                        for by in rhos], level)
        if iv:
            per[name] = iv
    measure = (f"CV Spearman rho: per-stage predictor - global R (each of {len(STAGE_PREDICTORS)}; "
               f"{level:.1%} paired t, Bonferroni)")
    if not per:
        return {"claim": "per-stage beats global", "measure": measure, "interval": None, "verdict": "not measured",
                "per_predictor": per}
    best = max(per, key=lambda n: per[n]["diff"])
    if any(iv["lo"] > 0 for iv in per.values()):
        text = "yes: " + ", ".join(n for n, iv in per.items() if iv["lo"] > 0) + " predicts better"
    elif all(iv["hi"] < 0 for iv in per.values()):
        text = "no: global R predicts better"
    else:
        text = "cannot tell"
    return {"claim": "per-stage beats global", "measure": f"{measure}; shown: {best}", "interval": per[best],
            "verdict": text, "per_predictor": per}


def pruning_summary(runs: dict[str, dict[int, dict[str, Any]]], regime: float) -> dict[str, Any]:
    """Per-seed figures and the three pooled verdicts from the summaries of every run (arm -> seed -> summary)."""
    key = f"{regime:g}"
    glob = {seed: _seed_row(s, key) for seed, s in sorted(runs.get("global", {}).items())}
    rows = list(glob.values())
    shift = _interval([(r["median_shift"] or {}).get("estimate") for r in rows])
    half = _interval([(r["split_half_shift"] or {}).get("estimate") for r in rows])
    claims = [
        {"claim": "refined space better", "measure": "median(refined) - median(initial) error", "interval": shift,
         "verdict": verdict(shift, "no: refined is worse", "yes: refined is better", "cannot tell")
         if shift else "not measured"},
        {"claim": "R* shared by winners", "measure": "held-out half: median error inside R*'s band - outside",
         "interval": half, "verdict": verdict(half, "no: inside is worse", "yes: inside is better", "cannot tell")
         if half else "not measured"},
        _stage_claim(rows),
    ]
    stage_runs = runs.get("stage", {})
    if stage_runs:
        diffs = []
        for seed, s in stage_runs.items():
            if seed in runs.get("global", {}):
                a = s["regimes"][key]["best_refined"], runs["global"][seed]["regimes"][key]["best_refined"]
                diffs.append(None if None in a else a[0] - a[1])
        iv = _interval(diffs)
        claims.append({"claim": "per-stage refinement beats global", "measure": "best refined error: stage - global",
                       "interval": iv, "verdict": verdict(iv, "no: worse", "yes: better", "cannot tell")
                       if iv else "not measured"})
    return {"seeds": glob, "claims": claims}


def _fmt(x: Any, spec: str = "+.4f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _fiv(d: dict[str, Any] | None, spec: str = "+.4f", none: str = "-") -> str:
    """``estimate [low, high]`` of a bootstrap interval or a paired t one (``none`` for a missing/infinite end)."""
    if not d:
        return "-"
    est = d.get("estimate", d.get("diff"))
    lo, hi = d.get("low", d.get("lo")), d.get("high", d.get("hi"))
    return f"{_fmt(est, spec, none)} [{_fmt(lo, spec, none)}, {_fmt(hi, spec, none)}]"


def pruning_markdown(s: PruningSettings, parent: dict[str, Any], summary: dict[str, Any]) -> str:
    rows = []
    for seed, r in summary["seeds"].items():
        rs = r["r_star"] or {}
        rows.append([str(seed), f"{rs.get('r_star', math.nan):.1f}", _fiv(r["median_shift"]),
                     _fmt(r["mwu_p"], ".3g"), _fiv(r["cost_ratio_10"], ".2f", "inf"), _fiv(r["split_half_shift"]),
                     _fmt(r["split_half_p"], ".3g"), _fiv(r["random_band_shift"]), _fmt(r["global_rho"], "+.2f"),
                     f"{r['best_stage'] or '-'} {_fmt(r['best_stage_rho'], '+.2f')}"])
    per_seed = markdown_table(["seed", "R*", "refined - initial median [95% CI]", "MWU p", "cost ratio @10% [CI]",
                               "split half: in - out", "p", "random-R band: in - out", "global R CV rho",
                               "best per-stage CV rho"], rows)
    claims = markdown_table(["claim", "measure", "mean over seeds [95% paired t]", "verdict"],
                            [[c["claim"], c["measure"], _fiv(c["interval"]), c["verdict"]] for c in summary["claims"]])
    return (f"Parent: {s.arch} on {s.data}, val accuracy {parent['val_accuracy']:.4f}, test accuracy "
            f"{parent['test_accuracy']:.4f}. Regime {s.regime:g} +- {s.band:g}, {s.samples} initial + "
            f"{s.refined_samples} refined candidates per seed, seeds {', '.join(map(str, s.seeds))}.\n\n"
            f"Per seed (errors as fractions; intervals: 95% bootstrap):\n\n{per_seed}\n\n"
            f"Verdicts:\n\n{claims}\n")


def _plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib  # only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [("median_shift", "refined - initial"), ("split_half_shift", "split half in - out"),
              ("random_band_shift", "random-R band in - out")]
    for j, (k, label) in enumerate(labels):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(summary["seeds"].values()):
            d = r.get(k)
            if d and d["low"] is not None and d["high"] is not None:
                xs.append(i + 0.25 * (j - 1))
                ys.append(d["estimate"])
                lo.append(d["estimate"] - d["low"])
                hi.append(d["high"] - d["estimate"])
        axes[0].errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=label)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set(xlabel="seed (index)", ylabel="median error shift", title="shifts with 95% bootstrap intervals")
    axes[0].legend(fontsize=8)
    names: list[str] = []
    for r in summary["seeds"].values():
        names += [b["name"] for b in r["buckets"] if b["name"] not in names]
    for i, r in enumerate(summary["seeds"].values()):
        by = {b["name"]: b["cv_spearman"] for b in r["buckets"]}
        axes[1].plot(range(len(names)), [by.get(n, math.nan) for n in names], "o-", label=f"seed index {i}")
    axes[1].set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    axes[1].set(ylabel="CV Spearman rho with error", title="which structure predicts error")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def protocol_pruning(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the pruning protocol into ``args.out``; write results.json, table.md and pruning.png."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings_from_args(args)
    saved = out / "settings.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(asdict(s))):
        raise SystemExit(f"{out} holds a run with other settings (see {saved}); use another --out or the same options")
    atomic_write_json(saved, asdict(s))
    t0 = time.perf_counter()
    parent = _parent(out, s, args.workers * args.threads)  # alone on the machine: every worker's cores
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in s.seeds:
        for arm in s.refine_by:
            runs.setdefault(arm, {})[seed] = _search(out, s, seed, arm, args.workers, args.threads)
    summary = pruning_summary(runs, s.regime)
    text = pruning_markdown(s, parent, summary)
    _plot(out / "pruning.png", summary)
    atomic_write(out / "table.md", text)
    payload = {"protocol": "pruning", "settings": asdict(s), "parent": parent, "summary": summary,
               "wall_seconds_this_call": time.perf_counter() - t0}
    atomic_write_json(out / "results.json", payload)
    print()
    print(text)
    print(f"written: {out / 'results.json'}, {out / 'table.md'}, {out / 'pruning.png'}")
    return payload


# -- command line ---------------------------------------------------------------------------------------------------
def _arms(text: str) -> tuple[str, ...]:
    arms = tuple(a.strip() for a in text.split(",") if a.strip())
    if not arms or any(a not in ("global", "stage") for a in arms) or "global" not in arms:
        raise argparse.ArgumentTypeError("--refine-by is 'global' or 'global,stage'")
    return arms


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("none", "full", "all") else int(text)


def settings_from_args(args: argparse.Namespace) -> PruningSettings:
    base = SMOKE if args.smoke else PruningSettings()
    given = {k: getattr(args, k) for k in PruningSettings.__dataclass_fields__
             if getattr(args, k, None) is not None}
    return replace(base, **given)


def add_pruning_parser(sub: Any) -> None:
    """The ``pruning`` sub-command: --out, --workers, --threads, --smoke and one option per setting (default: the
    settings', or the smoke settings' with --smoke)."""
    d = PruningSettings()
    p = sub.add_parser("pruning", help="pruning spaces: refined vs initial, R* on held-out halves, per-stage vs global",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (resumed when it holds a run with the same settings)")
    p.add_argument("--workers", type=int, default=2, help="candidate evaluations in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--smoke", action="store_true", help="a few minutes: tiny parent, populations and fine-tunes")
    p.add_argument("--arch", default=None, help=f"[{d.arch}]")
    p.add_argument("--data", default=None, help=f"[{d.data}]")
    p.add_argument("--parent-epochs", type=int, default=None, help=f"[{d.parent_epochs}]")
    p.add_argument("--train-limit", type=_opt_int, default=None, help="training images [all]")
    p.add_argument("--regime", type=float, default=None, help=f"[{d.regime}]")
    p.add_argument("--band", type=float, default=None, help=f"[{d.band}]")
    p.add_argument("--samples", type=int, default=None, help=f"[{d.samples}]")
    p.add_argument("--refined-samples", type=int, default=None, help=f"[{d.refined_samples}]")
    p.add_argument("--seeds", type=int_list, default=None, help="comma-separated [0,1,2]")
    p.add_argument("--finetune-steps", type=int, default=None, help=f"[{d.finetune_steps}]")
    p.add_argument("--val-size", type=_opt_int, default=None, help="validation images per candidate [full split]")
    p.add_argument("--final-epochs", type=int, default=None, help=f"[{d.final_epochs}]")
    p.add_argument("--refine-by", type=_arms, default=None, help="global, or global,stage (needs the engine's "
                   "--refine-by) [global]")
    p.set_defaults(func=protocol_pruning)
