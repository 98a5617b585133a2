"""A search's report, rendered from its store alone: ``report.md``, PNG plots and ``summary.json``.

Every report says what its comparisons can tell (:mod:`pruneopt.report_statistics`): the noise floor, Mann-Whitney
and KS p-values, bootstrap intervals of the median shift and the search cost, the random-R and split-half controls,
the bucket predictor table, the validation size and the final models' labels.

The populations, R* and the plots are the same for every task; the wording of errors, the parent's paragraph and
the winner-vs-baselines table come from the run's search task (:mod:`pruneopt.tasks`), found by the name in the
stored config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .analysis import edf, normalized_edf, r_buckets
from .common.files import atomic_write, atomic_write_json
from .report_statistics import final_labels, input_hw_of, noise_summary, regime_statistics, statistics_lines
from .store import Store
from .tasks.base import SearchTask, fmt
from .tasks.registry import get_task


def _task_name(cfg: dict[str, Any]) -> str:
    return str(cfg.get("task", "classification"))  # runs made before there were tasks are classification runs


def _plots(store: Store, root: Path, regimes: list[float], xlabel: str) -> list[str]:
    # lazy: matplotlib (a second to import) only when a report is rendered
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib only when plots are drawn

    files: list[str] = []
    stages = store.stages()
    for r in regimes:
        init = store.rows("initial", r)
        ref = store.rows("refined", r)
        if not init:
            continue
        e_i = np.array([x["error"] for x in init])
        grid = np.linspace(min(x["error"] for x in init + ref), max(x["error"] for x in init + ref), 400)
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        ax[0].plot(grid, edf(e_i, grid), label=f"initial (n={len(init)})")
        p_i = np.array([x["params"] for x in init])
        ax[0].plot(grid, normalized_edf(e_i, p_i, grid), "--", label="initial, normalised")
        if ref:
            e_r = np.array([x["error"] for x in ref])
            ax[0].plot(grid, edf(e_r, grid), label=f"refined (n={len(ref)})")
            p_r = np.array([x["params"] for x in ref])
            ax[0].plot(grid, normalized_edf(e_r, p_r, grid), "--", label="refined, normalised")
        ax[0].set(xlabel=xlabel, ylabel="F(error)", title=f"error EDF at {r:g} of the parent's FLOPs")
        ax[0].legend(fontsize=8)
        for b in r_buckets(e_i, np.array([x["ratio"] for x in init])):
            ax[1].plot(grid, edf(b.errors, grid), label=f"R {b.r_low:.0f}-{b.r_high:.0f} (n={b.errors.size})")
        ax[1].set(xlabel=xlabel, ylabel="F(error)", title="initial space, by R quantile")
        ax[1].legend(fontsize=8)
        name = f"edf_{r:g}.png"
        fig.tight_layout()
        fig.savefig(root / name, dpi=110)
        plt.close(fig)
        files.append(name)

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([x["ratio"] for x in init], e_i, s=12, label="initial")
        if ref:
            ax.scatter([x["ratio"] for x in ref], [x["error"] for x in ref], s=12, label="refined")
        rs = stages.get(f"rstar:{r:g}")
        if rs:
            ax.axvline(rs["r_star"], color="k", lw=1, label=f"R* = {rs['r_star']:.1f}")
            ax.axvspan(rs["ci_low"], rs["ci_high"], color="k", alpha=0.1, label=f"{rs['confidence']:.0%} CI")
            ax.axvspan(rs["r_star"] * (1 - rs["eps"]), rs["r_star"] * (1 + rs["eps"]), color="g", alpha=0.08,
                       label="refined band")
        ax.set(xlabel="R = FLOPs / params", ylabel=xlabel, title=f"error vs R at {r:g}")
        ax.legend(fontsize=8)
        name = f"error_vs_r_{r:g}.png"
        fig.tight_layout()
        fig.savefig(root / name, dpi=110)
        plt.close(fig)
        files.append(name)

    rs_all = [(r, stages[f"rstar:{r:g}"]) for r in regimes if f"rstar:{r:g}" in stages]
    if rs_all:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [r for r, _ in rs_all]
        ys = [s["r_star"] for _, s in rs_all]
        err = [[s["r_star"] - s["ci_low"] for _, s in rs_all], [s["ci_high"] - s["r_star"] for _, s in rs_all]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=4)
        ax.set(xlabel="FLOPs regime (fraction of parent)", ylabel="R*", title="R* per regime")
        fig.tight_layout()
        fig.savefig(root / "rstar_by_regime.png", dpi=110)
        plt.close(fig)
        files.append("rstar_by_regime.png")
    return files


def summarize(store: Store) -> dict[str, Any]:
    cfg = store.config()
    stages = store.stages()
    regimes = [float(r) for r in cfg["regimes"]]
    done = store.rows()
    walls = [r["wall_s"] for r in done if r["wall_s"]]
    per_regime = {}
    for r in regimes:
        per_regime[f"{r:g}"] = {
            "initial": len(store.rows("initial", r)),
            "refined": len(store.rows("refined", r)),
            "best_initial": min((x["error"] for x in store.rows("initial", r)), default=None),
            "best_refined": min((x["error"] for x in store.rows("refined", r)), default=None),
            "r_star": stages.get(f"rstar:{r:g}"),
            "compare": stages.get(f"compare:{r:g}"),
            "acceptance_initial": (stages.get(f"sampled:initial:{r:g}") or {}).get("acceptance_rate"),
            "acceptance_refined": (stages.get(f"sampled:refined:{r:g}") or {}).get("acceptance_rate"),
        }
    finals = {k.split(":", 1)[1]: v for k, v in stages.items() if k.startswith("final:")}
    task = get_task(_task_name(cfg))
    hw = input_hw_of(cfg, stages.get("parent"))
    statistics = {f"{r:g}": regime_statistics(store, cfg, r, stages.get(f"rstar:{r:g}"), hw) for r in regimes}
    return {
        "task": task.name,
        "metric": task.metric,
        "config": cfg,
        "parent": stages.get("parent"),
        "regimes": per_regime,
        "winner": stages.get("winner"),
        "finals": finals,
        "final_labels": final_labels(list(finals)),
        "val_size": cfg.get("val_size"),
        "noise_floor": noise_summary(store),
        "statistics": statistics,
        "candidates": store.counts(),
        "candidate_seconds_median": float(np.median(walls)) if walls else None,
        "candidates_per_hour_per_worker": 3600.0 / float(np.median(walls)) if walls else None,
        **task.summary_extra(cfg),
    }


def render_report(store: Store, root: Path) -> dict[str, Any]:
    """Write ``report.md``, the plots and ``summary.json`` into ``root``; return the summary."""
    s = summarize(store)
    task = get_task(s["task"])
    cfg = s["config"]
    regimes = [float(r) for r in cfg["regimes"]]
    plots = _plots(store, root, regimes, task.error_label)
    atomic_write_json(root / "summary.json", s)
    atomic_write(root / "report.md", "\n".join(report_lines(s, task, plots)) + "\n")
    return s


def report_lines(s: dict[str, Any], task: SearchTask, plots: list[str]) -> list[str]:
    """The lines of ``report.md`` for the summary ``s``."""
    cfg = s["config"]
    lines = [f"# Pruning-space search: {cfg['arch']} on {cfg['data']}{task.title_suffix}", ""]
    lines += task.report_intro(s)
    lines += ["## Populations", "",
              "| regime | initial n | refined n | best initial | best refined | R* [CI] | eps | KS p | "
              "search cost initial -> refined |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, v in s["regimes"].items():
        rs, c = v["r_star"] or {}, v["compare"] or {}
        lines.append(
            f"| {key} | {v['initial']} | {v['refined']} | {fmt(v['best_initial'])} | {fmt(v['best_refined'])} | "
            f"{fmt(rs.get('r_star'), '.1f')} [{fmt(rs.get('ci_low'), '.1f')}, {fmt(rs.get('ci_high'), '.1f')}] | "
            f"{fmt(rs.get('eps'), '.3f')} | {fmt(c.get('ks_pvalue'), '.3g')} | "
            f"{fmt(c.get('cost_initial'), '.1f')} -> {fmt(c.get('cost_refined'), '.1f')} |")
    lines += ["", "Search cost: expected samples to draw one subnetwork at least as good as the initial space's "
              "top-5% validation error (1 / F(e5)); lower is better.", ""]
    lines += statistics_lines(s)
    if s["finals"]:
        lines += task.report_finals(s)
    if s["candidate_seconds_median"]:
        lines += [f"Candidates: {s['candidates']}; median {s['candidate_seconds_median']:.1f} s each "
                  f"({s['candidates_per_hour_per_worker']:.0f} per hour per worker).", ""]
    lines += [f"![{name}]({name})" for name in plots]
    return lines
