"""The ``tmp`` protocol of ``bench/claims.py``: does taking more positives beat taking one?

Three in-batch arms with the same sampler, batch, temperature, views, steps and seeds; only the positive set
of the loss differs (:mod:`reidserve.train.losses`): ``tmp`` (every same-label view), ``single-neg`` (the other
view of the same image; same-label others are negatives) and ``single-mask`` (the other view; same-label
others left out of the softmax). Every run adapts one source backbone (trained once with labels on *other*
synthetic people and cameras, cached in ``OUT/source``) to the target data:

1. mechanism: the true target identities with a seeded fraction (0 / 20 / 40 %) reassigned to random other
   identities, no clustering;
2. DBSCAN: pseudo-labels from DBSCAN on the Jaccard distance every epoch, on data whose first clustering has
   ARI >= 0.5 against the true identities (reported), plus the cluster-centroid memory loss as a reference
   from another loss family.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from claims_cells import Cell, int_list, run_cells
from claims_stats import (
    METRICS,
    fmt_interval,
    fmt_pm,
    grouped_bar_plot,
    markdown_table,
    mean_sd,
    paired_interval,
    verdict,
)

from pruneopt.common.files import atomic_write, atomic_write_json
from pruneopt.common.threads import torch_threads

__all__ = ["TMP_ARMS", "TmpSettings", "add_tmp_parser", "protocol_tmp", "tmp_summary", "tmp_train_config"]

TMP_ARMS = ("tmp", "single-neg", "single-mask")
# (label, arm a, arm b): a - b > 0 means that taking more positives (or, last, masking) helped
TMP_COMPARISONS = (
    ("tmp - single-neg", "tmp", "single-neg"),
    ("tmp - single-mask", "tmp", "single-mask"),
    ("single-mask - single-neg", "single-mask", "single-neg"),
)


@dataclass(frozen=True)
class TmpSettings:
    """Everything the TMP protocols depend on (saved in ``OUT/settings.json`` and results.json)."""

    ids: int = 200
    cams: int = 6
    imgs_per_id: tuple[int, int] = (6, 10)  # images per identity and camera (the generator's default)
    camera_strength: float = 0.75
    size: tuple[int, int] = (64, 32)
    arch: str = "resnet18"
    color_jitter: float = 0.4
    pretrain_steps: int = 200
    batch: tuple[int, int] = (16, 4)
    tau: float = 0.05
    lr: float = 3.5e-4
    seeds: tuple[int, ...] = (0, 1, 2)
    noise: tuple[float, ...] = (0.0, 0.2, 0.4)
    mech_epochs: int = 2
    mech_iters: int = 30
    db_epochs: int = 4
    db_iters: int = 15
    eps: float = 0.5
    k1: int = 30
    k2: int = 6
    min_samples: int = 4
    arms: tuple[str, ...] = TMP_ARMS
    centroid: bool = True  # also the cluster-centroid memory loss (another family) in the DBSCAN protocol


def _data(out: Path, s: TmpSettings) -> tuple[Path, Path]:
    """The source (seed 1: other people and cameras) and target (seed 0) datasets, generated once."""
    from reidserve.data.synth import SynthConfig, generate

    paths = []
    for name, seed in (("source", 1), ("target", 0)):
        root = out / "data" / name
        if not (root / "synth.json").is_file():  # synth.json is written last
            if root.exists():
                shutil.rmtree(root)  # an interrupted generation: start it again
            generate(SynthConfig(ids=s.ids, cams=s.cams, seed=seed, size=s.size, imgs_per_id=s.imgs_per_id,
                                 camera_strength=s.camera_strength), root)
        paths.append(root)
    return paths[0], paths[1]


def _backbone(out: Path, s: TmpSettings, source: Path, target: Path, threads: int) -> dict[str, Any]:
    """Pretrain the source backbone once (``OUT/source``) and score it on the target's test split."""
    import torch

    from reidserve.data import load_dataset
    from reidserve.model import HeadConfig, ReidModel, backbone_from_subnet
    from reidserve.train import PretrainConfig, evaluate_model, pretrain_backbone

    folder, info = out / "source", out / "source.json"
    if info.is_file() and (folder / "spec.json").is_file():
        return dict(json.loads(info.read_text()))
    print(f"pretraining the source backbone ({s.arch}, {s.pretrain_steps} steps) on {source}", flush=True)
    cfg = PretrainConfig(data=str(source), arch=s.arch, size=s.size, p=s.batch[0], k=s.batch[1],
                         steps=s.pretrain_steps, color_jitter=s.color_jitter, eval_every=s.pretrain_steps,
                         threads=threads)
    src = pretrain_backbone(cfg, folder, log=lambda line: print("  " + line, flush=True))
    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ReidModel(backbone_from_subnet(folder), HeadConfig(input_size=s.size))
        before = evaluate_model(model, load_dataset(target), size=s.size)
    assert before is not None
    result = {"source_val": src, "target_before": dict(before.to_dict())}
    atomic_write_json(info, result)
    return result


def _cells(s: TmpSettings, base: dict[str, Any]) -> list[Cell]:
    """Every cell, seed by seed (an interrupted run has whole seeds of both protocols rather than one protocol)."""
    cells = []
    for seed in s.seeds:
        for noise in s.noise:
            cond = f"true ids, {round(100 * noise)}% noise"
            cells += [Cell(f"mech_n{round(100 * noise):02d}_{arm}_s{seed}", cond, arm, seed,
                           {**base, "labels": "true", "label_noise": noise}) for arm in s.arms]
        cells += [Cell(f"dbscan_{arm}_s{seed}", "DBSCAN", arm, seed, {**base, "labels": "dbscan"})
                  for arm in (*s.arms, *(("centroid",) if s.centroid else ()))]
    return cells


def tmp_train_config(out: Path, s: TmpSettings, cell: Cell, threads: int) -> Any:
    """The :class:`~reidserve.train.ReidTrainConfig` of one cell (no learning-rate step within a run)."""
    from reidserve.train import ReidTrainConfig

    mech = cell.payload["labels"] == "true"
    arm: Any = cell.arm  # one of reidserve.train.LOSSES (ReidTrainConfig.validate checks it)
    epochs, iters = (s.mech_epochs, s.mech_iters) if mech else (s.db_epochs, s.db_iters)
    return ReidTrainConfig(
        data=str(out / "data" / "target"), arch=None, backbone=str(out / "source"), epochs=epochs, iters=iters,
        p=s.batch[0], k=s.batch[1], loss=arm, tau=s.tau, lr=s.lr, step_size=epochs + 1, size=s.size,
        seed=cell.seed, k1=s.k1, k2=s.k2, eps=s.eps, min_samples=s.min_samples, outliers="drop",
        labels=cell.payload["labels"], label_noise=cell.payload.get("label_noise", 0.0),
        color_jitter=s.color_jitter, threads=threads, eval_every=epochs, progress=False,
    )  # fmt: skip


def _work(out: Path, cell: Cell) -> dict[str, Any]:
    """Train one cell into ``OUT/cells/NAME`` (train_reid resumes from its epoch checkpoint), keep its log and
    config, delete the checkpoint and model (disk), and return its figures."""
    from reidserve.train import train_reid

    s: TmpSettings = cell.payload["settings"]
    folder = out / "cells" / cell.name
    t0 = time.perf_counter()
    recs = train_reid(tmp_train_config(out, s, cell, cell.payload["threads"]), folder,
                      log=lambda line: print(f"  {cell.name}: {line}", flush=True)).records
    for leftover in (folder / "checkpoint.pt", folder / "model"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
    val = recs[-1]["val"]
    return {
        **{m: float(val[m]) for m in (*METRICS, "rank5")},
        "ari_first": recs[0].get("ari"), "ari_last": recs[-1].get("ari"),
        "nmi_first": recs[0].get("nmi"), "nmi_last": recs[-1].get("nmi"),
        "clusters": [r["clusters"] for r in recs], "outliers": [r["outliers"] for r in recs],
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def _group_rows(conditions: Sequence[str], arms: Sequence[str],
                by: dict[tuple[str, str], dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    groups = []
    for cond in conditions:
        for arm in arms:
            runs = by.get((cond, arm))
            if not runs:
                continue
            seeds = sorted(runs)
            row: dict[str, Any] = {"condition": cond, "arm": arm, "seeds": seeds}
            row.update({m: mean_sd([runs[k][m] for k in seeds]) for m in METRICS})
            for key in ("ari_first", "ari_last"):
                values = [runs[k][key] for k in seeds if runs[k][key] is not None]
                row[key] = mean_sd(values) if values else None
            groups.append(row)
    return groups


def tmp_summary(cells: Sequence[Cell], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per condition and arm: mean and SD of each metric over seeds; per condition and comparison: the paired
    interval of every metric and the verdict (on mAP), with the sign each metric's interval gives."""
    conditions = list(dict.fromkeys(c.condition for c in cells))
    arms = list(dict.fromkeys(c.arm for c in cells))
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for c in cells:
        if c.name in results:
            by.setdefault((c.condition, c.arm), {})[c.seed] = results[c.name]
    comparisons = []
    for cond in conditions:
        for label, a, b in TMP_COMPARISONS:
            ra, rb = by.get((cond, a)), by.get((cond, b))
            if not ra or not rb:
                continue
            seeds = sorted(set(ra) & set(rb))
            ivs = {m: paired_interval([ra[k][m] for k in seeds], [rb[k][m] for k in seeds]) for m in METRICS}
            thing = "more positives" if a == "tmp" else "masking"
            comparisons.append({
                "condition": cond, "comparison": label, "seeds": seeds, **ivs,
                "verdict": verdict(ivs["mAP"], f"{thing} helped", f"{thing} hurt", "could not be told apart"),
                "signs": {m: verdict(ivs[m], "+", "-", "0") for m in METRICS},
            })  # fmt: skip
    return {"conditions": conditions, "arms": arms, "groups": _group_rows(conditions, arms, by),
            "comparisons": comparisons}


def tmp_markdown(s: TmpSettings, backbone: dict[str, Any], summary: dict[str, Any]) -> str:
    """The arms table (mean ± SD) and the comparisons table (intervals, verdicts) in Markdown."""
    before = backbone["target_before"]
    rows = [["source backbone, before training", "-", *(f"{100 * before[m]:.2f}" for m in METRICS), "-"]]
    for g in summary["groups"]:
        ari = "-"
        if g["ari_first"] is not None and g["condition"] == "DBSCAN":
            ari = f"{g['ari_first'][0]:.2f} -> {g['ari_last'][0]:.2f}"
        rows.append([g["condition"], g["arm"], *(fmt_pm(*g[m]) for m in METRICS), ari])
    arms = markdown_table(["labels", "arm", "mAP", "rank-1", "mINP", "ARI first -> last"], rows)
    crow = [[c["condition"], c["comparison"], *(fmt_interval(c[m]) for m in METRICS), c["verdict"]]
            for c in summary["comparisons"]]
    comps = markdown_table(["labels", "difference", "Δ mAP [95% CI]", "Δ rank-1 [95% CI]", "Δ mINP [95% CI]",
                            "verdict (mAP)"], crow)
    return (f"Arms (%, mean ± SD over seeds {', '.join(map(str, s.seeds))}):\n\n{arms}\n\n"
            f"Differences of means (percentage points, 95% paired t interval over seeds):\n\n{comps}\n")


def _describe(r: dict[str, Any]) -> str:
    ari = f", ARI {r['ari_first']:.2f} -> {r['ari_last']:.2f}" if r.get("ari_first") is not None else ""
    return (f"mAP {100 * r['mAP']:.2f} R1 {100 * r['rank1']:.2f} mINP {100 * r['mINP']:.2f}{ari}, "
            f"{r['seconds']:.0f} s")


def protocol_tmp(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) both TMP protocols into ``args.out``; write results.json, table.md and tmp.png."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings_from_args(args)
    saved = out / "settings.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(asdict(s))):
        raise SystemExit(f"{out} holds a run with other settings (see {saved}); use another --out or the same options")
    atomic_write_json(saved, asdict(s))
    t0 = time.perf_counter()
    source, target = _data(out, s)
    backbone = _backbone(out, s, source, target, args.threads)
    cells = _cells(s, {"settings": s, "threads": args.threads})
    results = run_cells(out, cells, _work, args.jobs, describe=_describe)
    summary = tmp_summary(cells, results)
    text = tmp_markdown(s, backbone, summary)
    stats = {(g["condition"], g["arm"]): {m: g[m] for m in METRICS} for g in summary["groups"]}
    grouped_bar_plot(out / "tmp.png", "Take More Positives: in-batch arms (mean ± SD over seeds)",
                     summary["conditions"], summary["arms"], stats,
                     reference=("source backbone, before", backbone["target_before"]))
    atomic_write(out / "table.md", text)
    payload = {
        "protocol": "tmp", "settings": asdict(s), "backbone": backbone, "summary": summary,
        "cells": {c.name: {"condition": c.condition, "arm": c.arm, "seed": c.seed, **results[c.name]} for c in cells},
        "wall_seconds_this_call": time.perf_counter() - t0,
    }  # fmt: skip
    atomic_write_json(out / "results.json", payload)
    print()
    print(text)
    print(f"written: {out / 'results.json'}, {out / 'table.md'}, {out / 'tmp.png'}")
    return payload


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


def _pair(text: str) -> tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected AxB, got {text!r}")
    return int(parts[0]), int(parts[1])


def _range(text: str) -> tuple[int, int]:
    parts = text.split("-")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or A-B, got {text!r}")
    return int(parts[0]), int(parts[-1])


def _arms(text: str) -> tuple[str, ...]:
    arms = tuple(a.strip() for a in text.split(",") if a.strip())
    if not arms or any(a not in TMP_ARMS for a in arms):
        raise argparse.ArgumentTypeError(f"arms are a comma-separated subset of {', '.join(TMP_ARMS)}")
    return arms


def settings_from_args(args: argparse.Namespace) -> TmpSettings:
    fields = TmpSettings.__dataclass_fields__
    return replace(TmpSettings(), **{k: getattr(args, k) for k in fields})


def add_tmp_parser(sub: Any) -> None:
    """The ``tmp`` sub-command: one option per :class:`TmpSettings` field plus --out, --jobs, --threads."""
    d = TmpSettings()
    t = sub.add_parser("tmp", help="Take More Positives: mechanism (true ids + label noise) and DBSCAN protocols",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--out", required=True, help="output folder (resumed when it holds a run with the same settings)")
    t.add_argument("--jobs", type=int, default=2, help="training runs in parallel processes")
    t.add_argument("--threads", type=int, default=1, help="torch/FAISS threads per run")
    t.add_argument("--ids", type=int, default=d.ids, help="synthetic identities (half train, half test)")
    t.add_argument("--cams", type=int, default=d.cams, help="synthetic cameras")
    t.add_argument("--imgs-per-id", type=_range, default=d.imgs_per_id, help="images per identity and camera, A-B")
    t.add_argument("--camera-strength", type=float, default=d.camera_strength,
                   help="how strong each camera's look is (1 = the generator's full, hard look)")
    t.add_argument("--size", type=_pair, default=d.size, help="image HxW")
    t.add_argument("--arch", default=d.arch)
    t.add_argument("--color-jitter", type=float, default=d.color_jitter,
                   help="colour jitter of the training views (pretraining and adaptation)")
    t.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps, help="source backbone steps")
    t.add_argument("--batch", type=_pair, default=d.batch, help="PxK")
    t.add_argument("--tau", type=float, default=d.tau)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--seeds", type=int_list, default=d.seeds, help="comma-separated")
    t.add_argument("--noise", type=_floats, default=d.noise, help="label-noise fractions, comma-separated")
    t.add_argument("--mech-epochs", type=int, default=d.mech_epochs, help="mechanism runs: epochs")
    t.add_argument("--mech-iters", type=int, default=d.mech_iters, help="mechanism runs: steps per epoch")
    t.add_argument("--db-epochs", type=int, default=d.db_epochs, help="DBSCAN runs: cluster-and-train rounds")
    t.add_argument("--db-iters", type=int, default=d.db_iters, help="DBSCAN runs: steps per round")
    t.add_argument("--eps", type=float, default=d.eps, help="DBSCAN radius on the Jaccard distance")
    t.add_argument("--k1", type=int, default=d.k1)
    t.add_argument("--k2", type=int, default=d.k2)
    t.add_argument("--min-samples", type=int, default=d.min_samples)
    t.add_argument("--arms", type=_arms, default=d.arms, help="comma-separated subset of the in-batch arms")
    t.add_argument("--centroid", action=argparse.BooleanOptionalAction, default=d.centroid,
                   help="also run the cluster-centroid loss (another loss family) with the DBSCAN labels")
    t.set_defaults(func=protocol_tmp)
