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

Tasks:

* ``classification`` (Fashion-MNIST, 1x28x28): the parent is given or trained; a candidate's error is its top-1
  validation error after adaptive BN and a short SGD fine-tune (:class:`pruneopt.evaluate.ClassificationEvaluator`);
  the finals train ``final_epochs`` epochs and report top-1 test error.
* ``reid`` (person re-identification; ``data`` is a re-ID dataset folder, Market-1501 layout): the parent must be
  given (a backbone folder, ``spec.json`` + ``weights.safetensors``, or a ``reidserve train`` model folder); it is
  stored as a features-only, last-stride-1, RGB backbone and the space's FLOPs are counted at input ``size``.
  A candidate's error is ``1 - mAP`` after a short unsupervised TMP fine-tune (``finetune_steps`` steps of
  ``reid_batch`` P x K images, pseudo-labels from k-reciprocal Jaccard + DBSCAN clustering) on the training images of
  ``val_data`` (default: ``data``), scored on its query/gallery (:class:`pruneopt.evaluate_reid.ReidEvaluator`).
  The finals get the same longer fine-tune (``final_steps`` in ``final_rounds`` rounds, resumable, in
  ``runs/NAME/final/MODEL/run``) on ``data`` and report ``1 - mAP`` on its query/gallery as the test error. Without
  ``val_data`` the candidates were selected on the same query/gallery as the final figures; the report says so.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
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

TASKS = ("classification", "reid")
OUTLIER_MODES = ("drop", "singleton")
# fields that only one task uses: the other task leaves them at their defaults and out of its stored config (so the
# configs of classification runs made before the re-ID task existed still match on resume)
CLASSIFICATION_ONLY = ("parent_epochs", "parent_lr", "batch_size", "train_limit", "val_size", "bn_batches",
                       "finetune_batch", "final_epochs", "final_lr")
REID_ONLY = ("val_data", "size", "reid_batch", "finetune_rounds", "final_steps", "final_rounds", "k1", "k2",
             "cluster_eps", "outliers")
# shared fields whose default depends on the task (None in the dataclass, resolved in __post_init__)
_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"finetune_steps": 60, "finetune_lr": 0.01},
    "reid": {"finetune_steps": 100, "finetune_lr": 3.5e-4},
}
_QUICK: dict[str, dict[str, Any]] = {
    "classification": {"samples": 16, "refined_samples": 16, "parent_epochs": 1, "train_limit": 12000,
                       "val_size": 1000, "bn_batches": 5, "finetune_steps": 20, "final_epochs": 1, "n_boot": 500},
    "reid": {"samples": 16, "refined_samples": 16, "finetune_steps": 20, "reid_batch": (8, 4), "final_steps": 60,
             "final_rounds": 2, "n_boot": 500},
}
REID_PARENT_HINT = (
    "--task reid needs --parent: a trained backbone folder (spec.json + weights.safetensors), e.g. made with "
    "`python bench/tmp_train.py pretrain --data DIR --out runs/src --arch resnet18 --size 256x128`, the winner/ of "
    "an earlier search, or the model/ folder of a `reidserve train` run"
)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class SearchConfig:
    """Everything that determines a search's results (runtime choices such as workers are not part of it).

    ``task`` is ``"classification"`` (``data`` ``"fashion-mnist"``) or ``"reid"`` (``data`` a re-ID dataset folder);
    see the module docstring. Fields in :data:`CLASSIFICATION_ONLY` / :data:`REID_ONLY` belong to one task.
    """

    arch: str = "resnet20"
    task: str = "classification"
    data: str = "fashion-mnist"  # reid: the dataset folder of the finals (and of the candidates without val_data)
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
    finetune_steps: int | None = None  # classification 60 SGD steps; reid 100 TMP steps
    finetune_batch: int = 64
    finetune_lr: float | None = None  # classification 0.01 (SGD); reid 3.5e-4 (Adam), also the finals' lr
    final_epochs: int = 2
    final_lr: float = 0.02
    latency: bool = False
    # re-ID only
    val_data: str | None = None  # dataset folder that scores the candidates (None: data)
    size: tuple[int, int] = (256, 128)  # input H x W of the FLOPs count and of every fine-tune
    reid_batch: tuple[int, int] = (16, 4)  # P pseudo-identities x K images
    finetune_rounds: int = 1  # cluster-and-train rounds of a candidate's fine-tune
    final_steps: int = 400
    final_rounds: int = 4
    k1: int = 30
    k2: int = 6
    cluster_eps: float = 0.6  # DBSCAN eps on the Jaccard distance
    outliers: str = "drop"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise PruneoptError(f"unknown task {self.task!r} (available: {', '.join(TASKS)})")
        for name, value in _TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        get_arch(self.arch)
        if not self.regimes:
            raise PruneoptError("give at least one regime")
        for r in self.regimes:
            Regime(r, self.band)
        if self.samples < 4 or self.refined_samples < 4:
            raise PruneoptError("--samples must be at least 4 (an EDF of fewer models says nothing)")
        if self.eps is not None and not 0 < self.eps < 1:
            raise PruneoptError(f"--eps must be in (0, 1), got {self.eps}")
        defaults = {f.name: f.default for f in fields(self)}
        other = "reid" if self.task == "classification" else "classification"
        own_fields_of_other = REID_ONLY if other == "reid" else CLASSIFICATION_ONLY
        misplaced = [n for n in own_fields_of_other if getattr(self, n) != defaults[n]]
        if misplaced:
            raise PruneoptError(f"{', '.join(_option(n) for n in misplaced)} "
                                f"{'applies' if len(misplaced) == 1 else 'apply'} to --task {other} only")
        if self.task == "classification":
            if self.data != "fashion-mnist":
                raise PruneoptError(f"unknown dataset {self.data!r} for --task classification (available: "
                                    "fashion-mnist; a re-ID dataset folder needs --task reid)")
            if self.parent_epochs < 1 and self.parent is None:
                raise PruneoptError("--parent-epochs must be >= 1 when no --parent is given")
        else:
            self._check_reid()

    def _check_reid(self) -> None:
        if self.parent is None:
            raise PruneoptError(REID_PARENT_HINT)
        if self.data == "fashion-mnist":
            raise PruneoptError("--task reid needs --data DIR: a re-ID dataset folder (Market-1501 layout: "
                                "bounding_box_train/, bounding_box_test/, query/)")
        h, w = self.size
        checks = [
            (h >= 16 and w >= 16, f"--size must be at least 16x16, got {h}x{w}"),
            (self.reid_batch[0] >= 2 and self.reid_batch[1] >= 1,
             f"--reid-batch needs P >= 2 and K >= 1, got {self.reid_batch[0]}x{self.reid_batch[1]}"),
            (1 <= self.finetune_rounds <= self.finetune_steps,
             f"need 1 <= --finetune-rounds <= --finetune-steps, got {self.finetune_rounds} and {self.finetune_steps}"),
            (1 <= self.final_rounds <= self.final_steps,
             f"need 1 <= --final-rounds <= --final-steps, got {self.final_rounds} and {self.final_steps}"),
            (self.k1 >= 1 and self.k2 >= 1, f"--k1 and --k2 must be >= 1, got {self.k1} and {self.k2}"),
            (0 < self.cluster_eps < 1, f"--cluster-eps is a Jaccard distance in (0, 1), got {self.cluster_eps}"),
            (self.outliers in OUTLIER_MODES,
             f"--outliers must be one of {', '.join(OUTLIER_MODES)}, got {self.outliers!r}"),
            (self.finetune_lr is not None and self.finetune_lr > 0, f"finetune_lr must be > 0, got {self.finetune_lr}"),
        ]
        for ok, message in checks:
            if not ok:
                raise PruneoptError(message)

    @classmethod
    def quick(cls, **overrides: Any) -> SearchConfig:
        """About 10 minutes on 2 cores: small populations, short fine-tunes (classification: a small parent)."""
        base = _QUICK.get(overrides.get("task", "classification"), {})
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able config; the fields of the other task (at their defaults) are left out."""
        d = asdict(self)
        d["regimes"] = list(self.regimes)
        d["size"], d["reid_batch"] = list(self.size), list(self.reid_batch)
        for name in REID_ONLY if self.task == "classification" else CLASSIFICATION_ONLY:
            del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        d = {**d, "regimes": tuple(d["regimes"])}
        for name in ("size", "reid_batch"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


@dataclass
class Context:
    """What the stages share: config, run folder, store, data (classification), progress display."""

    cfg: SearchConfig
    root: Path
    store: Store
    data: DataSettings | None  # None for re-ID (the config names the dataset folders)
    workers: int = 1
    backend: str = "local"
    address: str | None = None
    threads: int | None = None
    progress: Any = None
    echo: bool = False  # without progress bars, print stage messages on stderr
    device: str = "cpu"  # re-ID fine-tunes only
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
    """The spec of a parent trained from scratch (classification: 1x28x28 input, 10 classes)."""
    return get_arch(cfg.arch).default_spec(in_chans=1, num_classes=10)


def input_hw(cfg: SearchConfig) -> tuple[int, int]:
    """The input size (H, W) at which FLOPs are counted: 28x28 Fashion-MNIST, or the re-ID ``size``."""
    return (28, 28) if cfg.task == "classification" else (int(cfg.size[0]), int(cfg.size[1]))


def make_space(cfg: SearchConfig, parent: ModelSpec) -> PruningSpace:
    return PruningSpace(parent, cfg.r_min, cfg.r_max, cfg.round_to, input_hw(cfg))


def reid_settings(cfg: SearchConfig, parent_dir: Path, data: str, steps: int, rounds: int, device: str = "cpu",
                  latency: bool = False) -> Any:
    """The :class:`~pruneopt.evaluate_reid.ReidSettings` of a fine-tune on ``data`` with the config's settings."""
    from .evaluate_reid import ReidSettings

    return ReidSettings(parent_dir=str(parent_dir.resolve()), data=str(Path(data).resolve()), steps=steps,
                        rounds=rounds, size=tuple(cfg.size), batch=tuple(cfg.reid_batch), lr=float(cfg.finetune_lr),
                        k1=cfg.k1, k2=cfg.k2, cluster_eps=cfg.cluster_eps, outliers=cfg.outliers, device=device,
                        latency=latency)


def check_reid_data(cfg: SearchConfig) -> None:
    """Fail early, in one line, when ``data`` or ``val_data`` is not a usable re-ID dataset folder."""
    from reidserve.data import DatasetError, load_dataset

    for option, path in (("--data", cfg.data), ("--val-data", cfg.val_data)):
        if path is not None:
            try:
                load_dataset(path)
            except DatasetError as exc:
                raise PruneoptError(f"{option} {path}: {exc}") from None


# -- stages ---------------------------------------------------------------------------------------------------
def stage_parent(ctx: Context) -> Path:
    cfg, store = ctx.cfg, ctx.store
    pdir = ctx.root / "parent"
    if store.stage("parent") is not None and (pdir / "weights.safetensors").is_file():
        return pdir
    if cfg.task == "reid":
        return _stage_parent_reid(ctx, pdir)
    assert ctx.data is not None
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


def _load_reid_parent(cfg: SearchConfig) -> torch.nn.Module:
    """The given parent as a features-only, last-stride-1, RGB backbone (classifier dropped, grey stem made RGB)."""
    from reidserve.model import ModelError, backbone_from_subnet, is_model_folder, load_reid_model

    src = Path(cfg.parent)  # type: ignore[arg-type]
    try:
        backbone = load_reid_model(src).backbone if is_model_folder(src) else backbone_from_subnet(src)
    except ModelError as exc:
        raise PruneoptError(f"--parent {src}: {exc}") from None
    if backbone.spec.arch != cfg.arch:
        raise PruneoptError(f"--parent {src} is a {backbone.spec.arch}; this search is for a {cfg.arch} "
                            f"(pass --arch {backbone.spec.arch})")
    return backbone.eval()


def _reid_map(backbone: torch.nn.Module, data: str, cfg: SearchConfig, device: str) -> dict[str, float]:
    """Query/gallery figures of ``backbone`` as it is (GeM + a fresh BNNeck, no fine-tune) on ``data``."""
    from reidserve.data import load_dataset
    from reidserve.model import HeadConfig, ReidModel
    from reidserve.train import evaluate_model

    model = ReidModel(backbone, HeadConfig(input_size=input_hw(cfg))).eval()
    metrics = evaluate_model(model, load_dataset(data), size=input_hw(cfg), device=device)
    assert metrics is not None
    return {"mAP": metrics.mAP, "rank1": metrics.rank1}


def _stage_parent_reid(ctx: Context, pdir: Path) -> Path:
    cfg = ctx.cfg
    backbone = _load_reid_parent(cfg)
    val = _reid_map(backbone, cfg.val_data or cfg.data, cfg, ctx.device)
    test = val if cfg.val_data is None else _reid_map(backbone, cfg.data, cfg, ctx.device)
    save_subnet(backbone, pdir)
    ctx.store.set_stage("parent", {
        "source": str(Path(cfg.parent).resolve()), "fine_tuned": False,  # type: ignore[arg-type]
        "val_error": 1 - val["mAP"], "test_error": 1 - test["mAP"], "val_map": val["mAP"], "test_map": test["mAP"],
        "test_rank1": test["rank1"], "spec": backbone.spec.to_dict()})
    ctx.say(f"parent {cfg.arch} (as given, no fine-tune): val mAP {val['mAP']:.4f}, test mAP {test['mAP']:.4f}")
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


def evaluate_all(ctx: Context, settings: dict[str, Any], space: str) -> None:
    """Evaluate every pending candidate of ``space`` (again, while failed ones have attempts left)."""
    label = f"{space} space"
    while tasks := ctx.store.pending(space=space):
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
        best = (f"best mAP {1 - self.best:.4f}" if self.ctx.cfg.task == "reid" and math.isfinite(self.best)
                else f"best error {self.best:.4f}")
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
    if cfg.task == "reid":
        _finals_reid(ctx, parent_dir, parent, models)
        return
    assert ctx.data is not None
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


def _finals_reid(ctx: Context, parent_dir: Path, parent: torch.nn.Module, models: dict[str, ModelSpec]) -> None:
    """Each model: thin, the same resumable TMP fine-tune on ``data`` (``final_steps`` in ``final_rounds`` rounds,
    seeded alike), then ``1 - mAP`` on its query/gallery; the fine-tuned winner backbone goes to ``winner/``."""
    from reidserve.train import TrainError, finetune_config, train_reid

    from .evaluate_reid import finetune_kwargs

    cfg, store = ctx.cfg, ctx.store
    settings = reid_settings(cfg, parent_dir, cfg.data, cfg.final_steps, cfg.final_rounds, ctx.device)
    pc = count(parent.spec, input_hw(cfg))
    for name, spec in models.items():
        key = f"final:{name}"
        if store.stage(key) is not None:
            continue
        fdir = ctx.root / "final" / name
        init = save_subnet(thin(parent, spec), fdir / "init")  # where the fine-tune starts (a subnetwork folder)
        tcfg = finetune_config(settings.data, cfg.final_steps, _seed(cfg.seed, "final"), backbone=init.resolve(),
                               **finetune_kwargs(settings, torch.get_num_threads()))
        try:  # resumes from fdir/run/checkpoint.pt after an interruption
            res = train_reid(tcfg, fdir / "run", log=lambda line, name=name: ctx.say(f"final {name}: {line}"))
        except TrainError as exc:
            raise PruneoptError(f"final fine-tune of {name}: {exc}") from None
        val = (res.last or {}).get("val")
        if val is None:
            raise PruneoptError(f"final fine-tune of {name} produced no query/gallery result")
        c = count(spec, input_hw(cfg))
        result = {"spec": spec.to_dict(), "macs": c.macs, "params": c.params, "ratio": c.ratio,
                  "flops_fraction": c.macs / pc.macs, "val_error": None, "test_error": 1 - float(val["mAP"]),
                  "test_map": float(val["mAP"]), "test_rank1": float(val["rank1"]), "steps": cfg.final_steps,
                  "reid_model": f"final/{name}/run/model"}  # relative to the run folder
        if name == "winner":
            save_subnet(res.model.backbone, ctx.root / "winner")
        store.set_stage(key, result)
        ctx.say(f"final {name}: test mAP {result['test_map']:.4f} at {result['flops_fraction']:.3f} of the parent's "
                "FLOPs")


def run_search(cfg: SearchConfig, out: str | Path, *, workers: int = 1, backend: str = "local",
               address: str | None = None, threads: int | None = None, data_dir: str | None = None,
               show_progress: bool = True, echo: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Run (or resume) a search into ``out``; returns the summary (also written to ``out/summary.json``).

    ``show_progress`` draws progress bars; without them, ``echo`` prints each stage's result on stderr.
    ``data_dir`` is where Fashion-MNIST lives (classification); ``device`` runs the re-ID fine-tunes (``cpu`` or
    ``cuda[:N]``; like ``threads`` and ``workers`` a runtime choice, not part of the config).
    """
    from .report import render_report

    root = Path(out)
    data: DataSettings | None = None
    if cfg.task == "classification":
        data = DataSettings(cfg.data, data_dir, train_limit=cfg.train_limit)
        data.load()  # fail early (one clear message) if the data is missing
    else:
        if data_dir is not None:
            raise PruneoptError("--data-dir is for Fashion-MNIST; with --task reid give the dataset folder as --data")
        check_reid_data(cfg)
    with Store.open(root, cfg.to_dict()) as store, _progress(show_progress) as progress, _driver_threads(threads):
        (root / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        ctx = Context(cfg, root, store, data, workers, backend, address, threads, progress, echo=echo, device=device)
        parent_dir = stage_parent(ctx)
        parent_model = load_subnet(parent_dir)
        if cfg.task == "reid":
            settings = reid_settings(cfg, parent_dir, cfg.val_data or cfg.data, cfg.finetune_steps,
                                     cfg.finetune_rounds, device, cfg.latency).to_dict()
        else:
            assert data is not None
            settings = ClassificationSettings(
                parent_dir=str(parent_dir.resolve()), data=data, bn_batches=cfg.bn_batches,
                finetune_steps=cfg.finetune_steps, finetune_batch=cfg.finetune_batch, finetune_lr=cfg.finetune_lr,
                val_size=cfg.val_size, latency=cfg.latency).to_dict()
        space = make_space(cfg, parent_model.spec)
        for r in cfg.regimes:
            add_population(ctx, space, "initial", r, cfg.samples)
        evaluate_all(ctx, settings, "initial")
        for r in cfg.regimes:
            a = stage_analysis(ctx, r)
            add_population(ctx, space.with_constraints(RatioConstraint(a["r_star"], a["eps"])), "refined", r,
                           cfg.refined_samples)
        evaluate_all(ctx, settings, "refined")
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

