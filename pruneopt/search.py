"""``pruneopt search``: populations of subnetworks, their error distributions, R*, a refined space, a winner.

Before the run folder is created, everything that can be checked without a trained parent is (:func:`preflight`):
the task's data and parent (``check_inputs``), and -- when the task can say what its parent's spec will be
(``planned_parent``) -- the pruning space: keep ratios, rounding, and that every regime's band yields the initial
population and the uniform baseline. No bad option costs a parent training.

Stages, each recorded in the run's store (``runs/NAME/search.db``) so that re-running the same command resumes
where it stopped:

1. **parent** -- the task loads or trains the parent; it is saved to ``runs/NAME/parent/``. A parent whose
   validation error is near chance (it removes less than 10% of a guess's errors) stops the search with the
   task's advice, unless ``force``;
2. **initial** -- for every regime, sample ``samples`` subnetworks of the initial space and evaluate them. With
   ``seeding`` ``common`` (the default) every candidate of the search -- all populations, all regimes -- is
   fine-tuned with one seed, hence one data order (common random numbers: scores differ by their specs); with
   ``per-candidate``, each with its own;
3. **noise** -- per regime, ``noise_specs`` initial candidates (best, median, worst for three) evaluated again with
   ``noise_seeds`` extra seeds each: the population ``noise`` of the store (:meth:`Store.noise_floor`), the noise
   floor the report sets the populations' differences against;
4. **analysis** -- per regime, a seeded bootstrap of R* (the FLOPs/params ratio of the best models);
5. **refined** -- per regime, sample ``refined_samples`` fresh subnetworks with ``|R - R*| <= eps R*`` (``refine_by``
   ``global``) or inside a band around the best models' per-stage R vector (``stage``), and evaluate them;
   compare with the initial population (EDF shift, KS test, search cost);
6. **finals** -- the winner (the best candidate of the primary regime, both spaces), the initial space's best
   (random search + adaptive BN, EagleEye-style; when it is not the winner) and the baselines at the same FLOPs
   (uniform width; global mean-|w| L1; layer-normalised L1; BN gamma: :mod:`pruneopt.baselines`) get the same final
   fine-tune by the task, then their test error; every one of them lies within ``FINAL_BAND`` (0.005) of the
   regime's FLOPs fraction where any candidate does (the record says ``in_final_band``); the winner is saved to
   ``runs/NAME/winner/``;
7. **report** -- ``report.md``, plots and ``summary.json``, rendered from the store alone (``pruneopt analyze``).

What a candidate's error is, how the parent is prepared, how the finals are fine-tuned and how the report words its
figures belong to the config's search task (:mod:`pruneopt.tasks`): ``classification`` is built in
(:mod:`pruneopt.tasks.classification`), ``reid`` comes with reidserve (``reidserve.search_task``). This module has
no branch per task.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .analysis import bootstrap_r_star, compare
from .baselines import FINAL_BAND, FINAL_LABELS, baseline_specs, uniform_fraction, uniform_spec
from .buckets import stage_r_star, stage_ratios
from .checkpoint import load_subnet, save_subnet
from .common.files import atomic_write_json
from .common.threads import torch_threads
from .complexity import count
from .devices import resolve_device, worker_devices
from .errors import PruneoptError
from .models import ModelSpec
from .pools import Outcome, evaluate_pending, make_evaluation_pool
from .pretrained import spec_of
from .report import render_report
from .search_config import SearchConfig
from .seeds import derive_seed
from .space import PruningSpace, RatioConstraint, Regime, StageRatioConstraint
from .store import Store
from .tasks.base import SearchTask
from .tasks.registry import get_task

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the stages share: config, run folder, store, run-time choices, progress display."""

    cfg: SearchConfig
    root: Path
    store: Store
    workers: int = 1
    backend: str = "local"
    address: str | None = None
    threads: int | None = None
    progress: Any = None
    echo: bool = False  # without progress bars, print stage messages on stderr
    device: str = "cpu"  # for tasks that train on a chosen device
    data_dir: str | None = None  # for tasks whose data is found in a folder
    loader_workers: int = 0  # for tasks that decode images in loader processes
    force: bool = False  # go on with a parent near chance
    log: list[str] = field(default_factory=list)

    @property
    def task(self) -> SearchTask:
        return get_task(self.cfg.task)

    def say(self, msg: str) -> None:
        self.log.append(msg)
        if self.progress is not None:
            self.progress.console.print(msg, soft_wrap=True)  # above the bars, never wrapped mid-line
        elif self.echo:
            print(msg, file=sys.stderr, flush=True)


def input_hw(cfg: SearchConfig) -> tuple[int, int]:
    """The input size (H, W) at which FLOPs are counted (the task's)."""
    _, h, w = get_task(cfg.task).input_shape(cfg)
    return int(h), int(w)


def make_space(cfg: SearchConfig, parent: ModelSpec) -> PruningSpace:
    c = cfg.common
    return PruningSpace(parent, c.r_min, c.r_max, c.round_to, input_hw(cfg))


NEAR_CHANCE = 0.9  # a parent whose error is above this fraction of a guess's is "near chance"


class ParentNearChance(PruneoptError):
    """The parent is hardly better than a guess: a search on it would rank noise."""


# -- checks before anything runs --------------------------------------------------------------------------------
def preflight(cfg: SearchConfig, task: SearchTask, data_dir: str | None) -> None:
    """Every check that needs no trained parent (see the module docstring); one-line errors."""
    task.check_inputs(cfg, data_dir)
    planned = getattr(task, "planned_parent", None)  # optional in the SearchTask protocol
    if planned is not None:
        check_space(cfg, planned(cfg, data_dir))


def check_space(cfg: SearchConfig, parent: ModelSpec) -> None:
    """The space around ``parent`` yields each regime's initial population (the same draws the search makes) and
    its uniform-width baseline."""
    c = cfg.common
    space = make_space(cfg, parent)
    for r in c.regimes:
        regime = Regime(r, c.band)
        space.sample(c.samples, regime, seed=derive_seed(c.seed, "sample", "initial", r))
        uniform_spec(space, regime)  # refuses a regime no uniform width reaches within the band
        fraction = uniform_fraction(space, regime)
        if abs(fraction - r) > FINAL_BAND + 1e-12:
            log.warning("regime %g: no uniform width lands within +-%g of the FLOPs (closest %.3f, widths rounded "
                        "to %s); its final will be labelled as outside the band", r, FINAL_BAND, fraction,
                        space.round_to or 1)


def check_parent(ctx: Context, record: dict[str, Any]) -> None:
    """Stop (unless ``ctx.force``) when the parent's validation error is near what a guess scores."""
    chance, error = record.get("chance_error"), record.get("val_error")
    if chance is None or error is None or error <= NEAR_CHANCE * chance:
        return
    if ctx.force:
        ctx.say(f"warning: the parent's validation error {error:.3f} is near chance ({chance:.3f}); going on "
                "(--force)")
        return
    advice = record.get("near_chance_advice") or "train it longer or pass a trained one"
    raise ParentNearChance(f"the parent's validation error {error:.3f} is near chance ({chance:.3f}): a search on "
                           f"it would rank noise; {advice}; --force goes on anyway")


# -- stages ---------------------------------------------------------------------------------------------------
def stage_parent(ctx: Context) -> Path:
    pdir = ctx.root / "parent"
    record = ctx.store.stage("parent")
    if record is None or not (pdir / "weights.safetensors").is_file():
        prepared = ctx.task.prepare_parent(ctx, pdir)
        save_subnet(prepared.model, pdir, ctx.task.preprocess(ctx.cfg))
        record = prepared.record
        ctx.store.set_stage("parent", record)
        ctx.say(prepared.message)
    check_parent(ctx, record)
    return pdir


def candidate_seed(cfg: SearchConfig, name: str, regime: float, index: int) -> int:
    """The fine-tune seed of a candidate: with ``seeding`` ``common`` (the default) one seed -- hence one data
    order and one batch-norm calibration -- for every candidate of the search, so that their scores differ by their
    specs alone; with ``per-candidate``, each candidate's own."""
    c = cfg.common
    if c.seeding == "per-candidate":
        return derive_seed(c.seed, "eval", name, regime, index)
    return derive_seed(c.seed, "eval")


def add_population(ctx: Context, space: PruningSpace, name: str, regime: float, n: int) -> None:
    key = f"sampled:{name}:{regime:g}"
    if ctx.store.stage(key) is not None:
        return
    seed = ctx.cfg.common.seed
    sseed = derive_seed(seed, "sample", name, regime)
    samples = space.sample(n, Regime(regime, ctx.cfg.common.band), seed=sseed)
    rows = []
    for i, rec in enumerate(samples.records()):
        spec = samples.spec(i)
        rows.append({"space": name, "regime": regime, "idx": i, "seed": candidate_seed(ctx.cfg, name, regime, i),
                     "spec": spec.to_json(), "spec_hash": spec.hash(), "macs": rec["macs"], "params": rec["params"],
                     "ratio": rec["ratio"], "flops_fraction": rec["flops_fraction"]})
    ctx.store.add_candidates(rows)
    ctx.store.set_stage(key, {"acceptance_rate": samples.acceptance_rate, "drawn": samples.drawn, "seed": sseed,
                              "constraints": [c.to_dict() for c in space.constraints]})


def add_noise(ctx: Context, regime: float) -> None:
    """The noise-floor population of ``regime`` (``noise``): ``noise_specs`` initial candidates spread from the
    best to the worst by error (best, median, worst for three), each queued again with ``noise_seeds`` extra
    fine-tune seeds -- the same seeds for every spec, none of them a candidate's -- so that the spread of one spec's
    error over seeds can be set against the spread between specs."""
    c = ctx.cfg.common
    key = f"sampled:noise:{regime:g}"
    if c.noise_specs == 0 or c.noise_seeds == 0 or ctx.store.stage(key) is not None:
        return
    rows = sorted(ctx.store.rows("initial", regime), key=lambda r: (r["error"], r["id"]))
    if not rows:
        return
    picks = sorted({int(round(x)) for x in np.linspace(0, len(rows) - 1, min(c.noise_specs, len(rows)))})
    seeds = [derive_seed(c.seed, "noise", k) for k in range(c.noise_seeds)]
    copied = ("spec", "spec_hash", "macs", "params", "ratio", "flops_fraction")
    ctx.store.add_candidates([{**{k: rows[p][k] for k in copied}, "space": "noise", "regime": regime,
                               "idx": j * len(seeds) + k, "seed": seed}
                              for j, p in enumerate(picks) for k, seed in enumerate(seeds)])
    ctx.store.set_stage(key, {"candidate_ids": [rows[p]["id"] for p in picks], "seeds": seeds})


def evaluate_all(ctx: Context, settings: dict[str, Any], space: str) -> None:
    """Evaluate every pending candidate of ``space`` (again, while failed ones have attempts left)."""
    label = f"{space} space"
    while jobs := ctx.store.pending(space=space):
        with make_evaluation_pool(ctx.backend, ctx.cfg.task, settings, ctx.workers, ctx.threads, ctx.address,
                                  worker_devices(ctx.device, ctx.workers)) as pool:
            evaluate_pending(ctx.store, pool, jobs, _Ticker(ctx, label, len(jobs)))


class _Ticker:
    """Progress of one evaluation round: a bar with the best error so far, and a line per failure."""

    def __init__(self, ctx: Context, label: str, total: int) -> None:
        self.ctx, self.label, self.best, self.total, self.done = ctx, label, math.inf, total, 0
        self.task = ctx.task
        self.bar = ctx.progress.add_task(f"{label}: evaluating", total=total) if ctx.progress else None

    def __call__(self, o: Outcome) -> None:
        self.done += 1
        if o.result is None:
            self.ctx.say(f"candidate {o.job.candidate_id} failed: {(o.message or '').splitlines()[0]}")
        else:
            self.best = min(self.best, o.result.error)
        best = f"best {self.task.describe_error(self.best)}" if math.isfinite(self.best) else "best error inf"
        if self.bar is not None:
            self.ctx.progress.update(self.bar, advance=1, description=f"{self.label}: evaluating ({best})")
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            self.ctx.say(f"{self.label}: {self.done}/{self.total} evaluated, {best}")


def stage_analysis(ctx: Context, regime: float) -> dict[str, Any]:
    key = f"rstar:{regime:g}"
    done = ctx.store.stage(key)
    if done is not None:
        return done
    rows = ctx.store.rows("initial", regime)
    if len(rows) < 4:
        raise PruneoptError(f"only {len(rows)} initial candidates finished at regime {regime:g}; cannot analyse")
    errors = np.array([r["error"] for r in rows])
    ratios = np.array([r["ratio"] for r in rows])
    c = ctx.cfg.common
    rs = bootstrap_r_star(errors, ratios, c.top, c.n_boot, derive_seed(c.seed, "bootstrap", regime))
    eps = c.eps if c.eps is not None else rs.suggested_eps
    payload = {**rs.to_dict(), "eps": eps}
    ctx.store.set_stage(key, payload)
    ctx.say(f"regime {regime:g}: R* = {rs.r_star:.1f} [{rs.ci_low:.1f}, {rs.ci_high:.1f}], refined band +-{eps:.0%}")
    return payload


def refined_space(ctx: Context, space: PruningSpace, regime: float, analysis: dict[str, Any]) -> PruningSpace:
    """The refined space of ``regime``: ``|R - R*| <= eps R*`` (``refine_by`` global), or a band around the best
    candidates' per-stage R vector (``refine_by`` stage, :func:`stage_constraint`)."""
    if ctx.cfg.common.refine_by == "stage":
        return space.with_constraints(stage_constraint(ctx, space, regime))
    return space.with_constraints(RatioConstraint(analysis["r_star"], analysis["eps"]))


def stage_constraint(ctx: Context, space: PruningSpace, regime: float) -> StageRatioConstraint:
    """The per-stage R band of ``regime`` from its initial population (recorded as stage ``rstar_stage:REGIME``:
    the per-stage R* with its intervals and the band's half-width per stage, ``--eps`` when given)."""
    key = f"rstar_stage:{regime:g}"
    done = ctx.store.stage(key)
    if done is None:
        c = ctx.cfg.common
        rows = ctx.store.rows("initial", regime)
        widths = np.array([ModelSpec.from_json(r["spec"]).widths for r in rows], dtype=np.int64)
        errors = np.array([r["error"] for r in rows])
        rs = stage_r_star(errors, stage_ratios(space, widths), c.top, c.n_boot,
                          derive_seed(c.seed, "bootstrap-stage", regime), stages=space.stages)
        eps = list(rs.suggested_eps) if c.eps is None else [c.eps] * len(rs.r_star)
        done = {**rs.to_dict(), "eps": eps}
        ctx.store.set_stage(key, done)
    return StageRatioConstraint(done["r_star"], done["eps"])


def stage_compare(ctx: Context, regime: float) -> dict[str, Any]:
    init = np.array([r["error"] for r in ctx.store.rows("initial", regime)])
    ref = np.array([r["error"] for r in ctx.store.rows("refined", regime)])
    c = compare(init, ref).to_dict()
    ctx.store.set_stage(f"compare:{regime:g}", c)
    return c


def stage_winner(ctx: Context, name: str = "winner") -> dict[str, Any]:
    """The best finished candidate of the primary regime within ``FINAL_BAND`` of its FLOPs fraction (ties: the
    earlier one): of both spaces for the ``winner``, of the initial space for ``initial_best`` (random search with
    adaptive BN, EagleEye-style). Where no candidate lands that close, the best of the regime's band, recorded
    with ``in_final_band`` false and said."""
    picked = ctx.store.stage(name)
    if picked is None:
        primary = ctx.cfg.common.regimes[0]
        spaces = ("initial", "refined") if name == "winner" else ("initial",)
        rows = [r for space in spaces for r in ctx.store.rows(space, primary)]
        if not rows:
            raise PruneoptError(f"no finished candidate at regime {primary:g}")
        inside = [r for r in rows if abs(r["flops_fraction"] - primary) <= FINAL_BAND + 1e-12]
        best = min(inside or rows, key=lambda r: (r["error"], r["id"]))
        picked = {"candidate_id": best["id"], "space": best["space"], "error": best["error"], "spec": best["spec"],
                  "flops_fraction": best["flops_fraction"], "final_band": FINAL_BAND, "in_final_band": bool(inside)}
        if not inside:
            ctx.say(f"warning: no finished candidate lies within +-{FINAL_BAND:g} of regime {primary:g}; the "
                    f"{name} is the best of the band, at {best['flops_fraction']:.4f} of the parent's FLOPs")
        ctx.store.set_stage(name, picked)
    return picked


def stage_finals(ctx: Context, parent_dir: Path) -> None:
    """The winner, the initial space's best (when it is not the winner) and the baselines
    (:data:`~pruneopt.baselines.FINAL_LABELS`), fine-tuned alike by the task; each recorded as it finishes, with
    whether it lands within ``FINAL_BAND`` of the regime."""
    cfg, store, task = ctx.cfg, ctx.store, ctx.task
    winner, initial_best = stage_winner(ctx), stage_winner(ctx, "initial_best")
    parent = load_subnet(parent_dir)
    space = make_space(cfg, spec_of(parent))
    regime = Regime(cfg.common.regimes[0], cfg.common.band)
    models = {"winner": ModelSpec.from_json(winner["spec"])}
    if initial_best["candidate_id"] != winner["candidate_id"]:
        models["initial_best"] = ModelSpec.from_json(initial_best["spec"])
    models.update(baseline_specs(parent, space, regime))
    pending = {name: spec for name, spec in models.items() if store.stage(f"final:{name}") is None}
    if not pending:
        _same_as_winner(ctx, models)
        return
    hw = input_hw(cfg)
    parent_macs = count(spec_of(parent), hw).macs
    for final in task.finetune_finals(ctx, parent_dir, parent, pending):
        spec = pending[final.name]
        c = count(spec, hw)
        fraction = c.macs / parent_macs
        result = {"spec": spec.to_dict(), "macs": c.macs, "params": c.params, "ratio": c.ratio,
                  "flops_fraction": fraction, "label": FINAL_LABELS[final.name],
                  "in_final_band": abs(fraction - regime.fraction) <= FINAL_BAND + 1e-12, **final.figures}
        if final.name == "winner":
            save_subnet(final.model, ctx.root / "winner", task.preprocess(cfg))
        store.set_stage(f"final:{final.name}", result)
        ctx.say(f"final {final.name}: test {task.describe_error(result['test_error'])} at "
                f"{result['flops_fraction']:.3f} of the parent's FLOPs")
    _same_as_winner(ctx, models)


def _same_as_winner(ctx: Context, models: dict[str, ModelSpec]) -> None:
    """When the initial space's best is the winner, its final is the winner's (recorded once, ``same_as``)."""
    if "initial_best" in models or ctx.store.stage("final:initial_best") is not None:
        return
    won = ctx.store.stage("final:winner")
    if won is not None:
        ctx.store.set_stage("final:initial_best", {**won, "label": FINAL_LABELS["initial_best"], "same_as": "winner"})


def run_search(cfg: SearchConfig, out: str | Path, *, workers: int = 1, backend: str = "local",
               address: str | None = None, threads: int | None = None, data_dir: str | None = None,
               show_progress: bool = True, echo: bool = False, device: str = "cpu", loader_workers: int = 0,
               force: bool = False) -> dict[str, Any]:
    """Run (or resume) a search into ``out``; returns the summary (also written to ``out/summary.json``).

    ``show_progress`` draws progress bars; without them, ``echo`` prints each stage's result on stderr.
    ``data_dir`` is where the task finds its data (classification: Fashion-MNIST, CIFAR); ``device`` is where a
    task that trains on a chosen device does (``cpu``, ``cuda`` -- each worker on its own GPU -- or ``cuda:N``);
    ``loader_workers`` decode images for tasks that read image files; ``force`` goes on with a parent near chance.
    Like ``threads`` and ``workers`` they are run-time choices, not part of the config.
    """
    root = Path(out)
    task = get_task(cfg.task)
    device = resolve_device(device)  # never silently on another device than the one asked for
    preflight(cfg, task, data_dir)  # fail early (one clear message), before the run folder exists
    with Store.open(root, cfg.to_dict()) as store, _progress(show_progress) as progress, torch_threads(threads):
        # an explicit ``threads`` applies to the driver's own training too (equal settings, identical runs)
        atomic_write_json(root / "config.json", cfg.to_dict())
        ctx = Context(cfg, root, store, workers, backend, address, threads, progress, echo=echo, device=device,
                      data_dir=data_dir, loader_workers=loader_workers, force=force)
        if store.reused:
            _start_afresh(ctx, store.reused)
        parent_dir = stage_parent(ctx)
        parent_model = load_subnet(parent_dir)
        settings = task.worker_settings(ctx, parent_dir)
        space = make_space(cfg, spec_of(parent_model))
        c = cfg.common
        for r in c.regimes:
            add_population(ctx, space, "initial", r, c.samples)
        evaluate_all(ctx, settings, "initial")
        for r in c.regimes:
            add_noise(ctx, r)
        evaluate_all(ctx, settings, "noise")
        for r in c.regimes:
            add_population(ctx, refined_space(ctx, space, r, stage_analysis(ctx, r)), "refined", r,
                           c.refined_samples)
        evaluate_all(ctx, settings, "refined")
        for r in c.regimes:
            stage_compare(ctx, r)
        stage_finals(ctx, parent_dir)
        return render_report(store, root)


def _start_afresh(ctx: Context, changes: str) -> None:
    """A run folder with no finished candidate took new options: drop what its old config left behind (the parent
    and its checkpoints, final fine-tunes, the winner), except a folder holding the new config's own ``--parent``."""
    given = ctx.cfg.common.parent
    for name in ("parent", "final", "winner"):
        folder = ctx.root / name
        if folder.is_dir() and not (given and Path(given).resolve().is_relative_to(folder.resolve())):
            shutil.rmtree(folder)
    ctx.say(f"{ctx.root}: no candidate had finished, so the folder is re-used with the new options ({changes}); "
            "it starts afresh")


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """Progress bars on stderr when it is a terminal; otherwise none (each stage's result is then one line on
    stderr, in order with the rest of the log)."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as p:
        yield p
