"""``pruneopt search``: populations of subnetworks, their error distributions, R*, a refined space, a winner.

Stages, each recorded in the run's store (``runs/NAME/search.db``) so that re-running the same command resumes
where it stopped:

1. **parent** -- load the given parent, or train one (checkpointed every epoch) into ``runs/NAME/parent/``;
2. **initial** -- for every regime, sample ``samples`` subnetworks of the initial space and evaluate them;
3. **analysis** -- per regime, a seeded bootstrap of R* (the FLOPs/params ratio of the best models);
4. **refined** -- per regime, sample ``refined_samples`` fresh subnetworks with ``|R - R*| <= eps R*`` and
   evaluate them; compare with the initial population (EDF shift, KS test, search cost);
5. **winner** -- the best candidate of the primary (first) regime, both spaces;
6. **finals** -- the winner and two baselines at the same FLOPs (uniform width; global L1 magnitude) get the same
   final fine-tune, then their test error; the winner is saved to ``runs/NAME/winner/``;
7. **report** -- ``report.md``, plots and ``summary.json``, rendered from the store alone (``pruneopt analyze``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import bootstrap_r_star, compare
from .baselines import global_l1_spec, uniform_spec
from .checkpoint import load_subnet, save_subnet
from .complexity import count
from .errors import PruneoptError
from .evaluate import ClassificationSettings, DataSettings
from .models import ModelSpec, build, get_arch
from .runners import evaluate_pending, make_runner
from .space import PruningSpace, RatioConstraint, Regime
from .store import Store
from .thinning import thin
from .train import TrainConfig, top1_error, train


@dataclass(frozen=True)
class SearchConfig:
    """Everything that determines a search's results (runtime choices such as workers are not part of it)."""

    arch: str = "resnet20"
    task: str = "classification"
    data: str = "fashion-mnist"
    regimes: tuple[float, ...] = (0.5,)
    band: float = 0.02
    samples: int = 64
    refined_samples: int = 64
    seed: int = 0
    r_min: float = 0.2
    r_max: float = 1.0
    round_to: int | None = None
    eps: float | None = None  # None: from the bootstrap (the best models' R range)
    top: float = 0.1  # fraction of a population that counts as "best" for R*
    n_boot: int = 2000
    parent: str | None = None  # a subnetwork folder; None: train one
    parent_epochs: int = 4
    parent_lr: float = 0.1
    batch_size: int = 128
    train_limit: int | None = None
    val_size: int | None = 2000
    bn_batches: int = 8
    finetune_steps: int = 60
    finetune_batch: int = 64
    finetune_lr: float = 0.01
    final_epochs: int = 2
    final_lr: float = 0.02
    latency: bool = False

    def __post_init__(self) -> None:
        get_arch(self.arch)
        if not self.regimes:
            raise PruneoptError("give at least one regime")
        for r in self.regimes:
            Regime(r, self.band)
        if self.samples < 4 or self.refined_samples < 4:
            raise PruneoptError("--samples must be at least 4 (an EDF of fewer models says nothing)")
        if self.task != "classification":
            raise PruneoptError(f"unknown task {self.task!r} (available: classification)")
        if self.eps is not None and not 0 < self.eps < 1:
            raise PruneoptError(f"--eps must be in (0, 1), got {self.eps}")
        if self.parent_epochs < 1 and self.parent is None:
            raise PruneoptError("--parent-epochs must be >= 1 when no --parent is given")

    @classmethod
    def quick(cls, **overrides: Any) -> SearchConfig:
        """A few-minute search on 2 cores: small parent, small populations, short fine-tunes."""
        base = {"samples": 16, "refined_samples": 16, "parent_epochs": 1, "train_limit": 12000, "val_size": 1000,
                "bn_batches": 5, "finetune_steps": 20, "final_epochs": 1, "n_boot": 500}
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regimes"] = list(self.regimes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        return cls(**{**d, "regimes": tuple(d["regimes"])})


@dataclass
class Context:
    """What the stages share: config, run folder, store, data, progress display."""

    cfg: SearchConfig
    root: Path
    store: Store
    data: DataSettings
    workers: int = 1
    backend: str = "local"
    address: str | None = None
    threads: int | None = None
    progress: Any = None
    echo: bool = False  # without progress bars, print stage messages on stderr
    log: list[str] = field(default_factory=list)

    def say(self, msg: str) -> None:
        self.log.append(msg)
        if self.progress is not None:
            self.progress.console.print(msg)
        elif self.echo:
            print(msg, file=sys.stderr, flush=True)


def _seed(*parts: Any) -> int:
    """A stable 31-bit seed from strings and numbers (independent of Python's hash randomisation)."""
    ints = [int.from_bytes(str(p).encode(), "little") % (2**63) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0] >> 1)


def parent_spec(cfg: SearchConfig) -> ModelSpec:
    return get_arch(cfg.arch).default_spec(in_chans=1, num_classes=10)


def make_space(cfg: SearchConfig, parent: ModelSpec) -> PruningSpace:
    return PruningSpace(parent, cfg.r_min, cfg.r_max, cfg.round_to, (28, 28))


# -- stages ---------------------------------------------------------------------------------------------------
def stage_parent(ctx: Context) -> Path:
    cfg, store = ctx.cfg, ctx.store
    pdir = ctx.root / "parent"
    if store.stage("parent") is not None and (pdir / "weights.safetensors").is_file():
        return pdir
    train_split, val, test = ctx.data.load()
    if cfg.parent is not None:
        model = load_subnet(cfg.parent)
        if model.spec.in_chans != 1 or model.spec.num_classes != 10 or model.spec.arch != cfg.arch:
            raise PruneoptError(f"--parent {cfg.parent} is a {model.spec.arch} for {model.spec.in_chans}-channel "
                                f"input and {model.spec.num_classes} classes; this search needs a {cfg.arch} for "
                                "1x28x28 Fashion-MNIST (10 classes)")
        source = str(Path(cfg.parent).resolve())
    else:
        torch.manual_seed(_seed(cfg.seed, "init"))  # weight init draws from the global generator
        model = build(parent_spec(cfg))
        tc = TrainConfig(epochs=cfg.parent_epochs, batch_size=cfg.batch_size, lr=cfg.parent_lr)
        pdir.mkdir(parents=True, exist_ok=True)
        total = cfg.parent_epochs * (len(train_split) // cfg.batch_size)
        bar = ctx.progress.add_task("parent: training", total=total) if ctx.progress else None

        def tick(step: int, _total: int, loss: float) -> None:
            if bar is not None:
                ctx.progress.update(bar, completed=step, description=f"parent: training (loss {loss:.3f})")

        train(model, train_split, tc, _seed(cfg.seed, "parent"), checkpoint=pdir / "checkpoint.pt", progress=tick)
        source = "trained"
    val_err = top1_error(model, val)
    test_err = top1_error(model, test)
    save_subnet(model, pdir)
    store.set_stage("parent", {"source": source, "val_error": val_err, "test_error": test_err,
                               "spec": model.spec.to_dict()})
    ctx.say(f"parent {cfg.arch}: val error {val_err:.4f}, test error {test_err:.4f}")
    return pdir


def add_population(ctx: Context, space: PruningSpace, name: str, regime: float, n: int) -> None:
    key = f"sampled:{name}:{regime:g}"
    if ctx.store.stage(key) is not None:
        return
    sseed = _seed(ctx.cfg.seed, "sample", name, regime)
    samples = space.sample(n, Regime(regime, ctx.cfg.band), seed=sseed)
    rows = []
    for i, rec in enumerate(samples.records()):
        spec = samples.spec(i)
        rows.append({"space": name, "regime": regime, "idx": i, "seed": _seed(ctx.cfg.seed, "eval", name, regime, i),
                     "spec": spec.to_json(), "spec_hash": spec.hash(), "macs": rec["macs"], "params": rec["params"],
                     "ratio": rec["ratio"], "flops_fraction": rec["flops_fraction"]})
    ctx.store.add_candidates(rows)
    ctx.store.set_stage(key, {"acceptance_rate": samples.acceptance_rate, "drawn": samples.drawn, "seed": sseed,
                              "constraints": [c.to_dict() for c in space.constraints]})


def evaluate_all(ctx: Context, settings: dict[str, Any], label: str) -> None:
    """Evaluate every pending candidate (again, while failed ones have attempts left)."""
    while tasks := ctx.store.pending():
        with make_runner(ctx.backend, ctx.cfg.task, settings, ctx.workers, ctx.threads, ctx.address) as runner:
            evaluate_pending(ctx.store, runner, tasks, _Ticker(ctx, label, len(tasks)))


class _Ticker:
    """Progress of one evaluation round: a bar with the best error so far, and a line per failure."""

    def __init__(self, ctx: Context, label: str, total: int) -> None:
        self.ctx, self.label, self.best, self.total, self.done = ctx, label, math.inf, total, 0
        self.bar = ctx.progress.add_task(f"{label}: evaluating", total=total) if ctx.progress else None

    def __call__(self, o: Any) -> None:
        self.done += 1
        if o.result is None:
            self.ctx.say(f"candidate {o.task.candidate_id} failed: {(o.message or '').splitlines()[0]}")
        else:
            self.best = min(self.best, o.result.error)
        if self.bar is not None:
            self.ctx.progress.update(self.bar, advance=1,
                                     description=f"{self.label}: evaluating (best error {self.best:.4f})")
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            self.ctx.say(f"{self.label}: {self.done}/{self.total} evaluated, best error {self.best:.4f}")


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
    rs = bootstrap_r_star(errors, ratios, ctx.cfg.top, ctx.cfg.n_boot, _seed(ctx.cfg.seed, "bootstrap", regime))
    eps = ctx.cfg.eps if ctx.cfg.eps is not None else rs.suggested_eps
    payload = {**rs.to_dict(), "eps": eps}
    ctx.store.set_stage(key, payload)
    ctx.say(f"regime {regime:g}: R* = {rs.r_star:.1f} [{rs.ci_low:.1f}, {rs.ci_high:.1f}], refined band +-{eps:.0%}")
    return payload


def stage_compare(ctx: Context, regime: float) -> dict[str, Any]:
    init = np.array([r["error"] for r in ctx.store.rows("initial", regime)])
    ref = np.array([r["error"] for r in ctx.store.rows("refined", regime)])
    c = compare(init, ref).to_dict()
    ctx.store.set_stage(f"compare:{regime:g}", c)
    return c


def stage_finals(ctx: Context, parent_dir: Path) -> None:
    cfg, store = ctx.cfg, ctx.store
    primary = cfg.regimes[0]
    winner = store.stage("winner")
    if winner is None:
        rows = store.rows(None, primary)
        if not rows:
            raise PruneoptError(f"no finished candidate at regime {primary:g}")
        best = min(rows, key=lambda r: (r["error"], r["id"]))
        winner = {"candidate_id": best["id"], "space": best["space"], "error": best["error"], "spec": best["spec"]}
        store.set_stage("winner", winner)
    parent = load_subnet(parent_dir)
    space = make_space(cfg, parent.spec)
    regime = Regime(primary, cfg.band)
    models = {
        "winner": ModelSpec.from_json(winner["spec"]),
        "uniform": uniform_spec(space, regime),
        "global_l1": global_l1_spec(parent, space, regime),
    }
    train_split, val, test = ctx.data.load()
    for name, spec in models.items():
        key = f"final:{name}"
        if store.stage(key) is not None:
            continue
        model = thin(parent, spec)
        fdir = ctx.root / "final" / name
        fdir.mkdir(parents=True, exist_ok=True)
        tc = TrainConfig(epochs=cfg.final_epochs, batch_size=cfg.batch_size, lr=cfg.final_lr, warmup_steps=0)
        total = cfg.final_epochs * (len(train_split) // cfg.batch_size)
        bar = ctx.progress.add_task(f"final fine-tune: {name}", total=total) if ctx.progress else None

        def tick(step: int, _t: int, loss: float, bar: Any = bar, name: str = name) -> None:
            if bar is not None:
                ctx.progress.update(bar, completed=step, description=f"final fine-tune: {name} (loss {loss:.3f})")

        train(model, train_split, tc, _seed(cfg.seed, "final"), checkpoint=fdir / "checkpoint.pt", progress=tick)
        c = count(spec, (28, 28))
        pc = count(parent.spec, (28, 28))
        result = {"spec": spec.to_dict(), "macs": c.macs, "params": c.params, "ratio": c.ratio,
                  "flops_fraction": c.macs / pc.macs, "val_error": top1_error(model, val),
                  "test_error": top1_error(model, test)}
        if name == "winner":
            save_subnet(model, ctx.root / "winner")
        store.set_stage(key, result)
        ctx.say(f"final {name}: test error {result['test_error']:.4f} at {result['flops_fraction']:.3f} of the "
                f"parent's FLOPs")


def run_search(cfg: SearchConfig, out: str | Path, *, workers: int = 1, backend: str = "local",
               address: str | None = None, threads: int | None = None, data_dir: str | None = None,
               show_progress: bool = True, echo: bool = False) -> dict[str, Any]:
    """Run (or resume) a search into ``out``; returns the summary (also written to ``out/summary.json``).

    ``show_progress`` draws progress bars; without them, ``echo`` prints each stage's result on stderr.
    """
    from .report import render_report

    root = Path(out)
    data = DataSettings(cfg.data, data_dir, train_limit=cfg.train_limit)
    data.load()  # fail early (one clear message) if the data is missing
    with Store.open(root, cfg.to_dict()) as store, _progress(show_progress) as progress, _driver_threads(threads):
        (root / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        ctx = Context(cfg, root, store, data, workers, backend, address, threads, progress, echo=echo)
        parent_dir = stage_parent(ctx)
        parent_model = load_subnet(parent_dir)
        settings = ClassificationSettings(
            parent_dir=str(parent_dir.resolve()), data=data, bn_batches=cfg.bn_batches,
            finetune_steps=cfg.finetune_steps, finetune_batch=cfg.finetune_batch, finetune_lr=cfg.finetune_lr,
            val_size=cfg.val_size, latency=cfg.latency).to_dict()
        space = make_space(cfg, parent_model.spec)
        for r in cfg.regimes:
            add_population(ctx, space, "initial", r, cfg.samples)
        evaluate_all(ctx, settings, "initial space")
        for r in cfg.regimes:
            a = stage_analysis(ctx, r)
            add_population(ctx, space.with_constraints(RatioConstraint(a["r_star"], a["eps"])), "refined", r,
                           cfg.refined_samples)
        evaluate_all(ctx, settings, "refined space")
        for r in cfg.regimes:
            stage_compare(ctx, r)
        stage_finals(ctx, parent_dir)
        return render_report(store, root)


@contextmanager
def _driver_threads(threads: int | None) -> Iterator[None]:
    """With an explicit ``threads``, the driver's own training uses it too (equal settings, identical runs)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=False) as p:
        yield p

