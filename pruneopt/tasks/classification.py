"""The built-in search task ``classification``: Fashion-MNIST (1x28x28, 10 classes), top-1 error.

* **parent** -- the given ``--parent`` (a 1-channel, 10-class network of the config's architecture) or one trained in
  the run (``parent_epochs`` epochs, checkpointed every epoch in ``runs/NAME/parent/``);
* **candidates** -- :class:`ClassificationEvaluator`, for each spec:

  1. thin the trained parent to the spec, keeping the largest-L1 filters (:func:`pruneopt.thinning.thin`);
  2. recalibrate batch norm on a few training batches (adaptive BN: train mode, no gradients);
  3. fine-tune briefly: a fixed number of SGD steps on the training split, the same budget for every candidate;
  4. score top-1 error on the validation split (never the test split);

* **finals** -- ``final_epochs`` epochs of SGD for the winner and each baseline, then top-1 test error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_subnet
from ..data import load_fashion_mnist, train_val_split
from ..data.fashion_mnist import MEAN, STD, Split
from ..errors import PruneoptError
from ..evaluate import EvalResult, onnx_latency_ms
from ..models import ModelSpec, build, get_arch
from ..preprocess import Preprocess
from ..seeds import derive_seed
from ..thinning import thin
from ..train import TrainConfig, finetune, recalibrate_bn, top1_error, train
from .base import ConfigView, FinalResult, ParentResult, RunContext, fmt
from .sections import setting

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class ClassificationSection:
    """The settings of a classification search (after the common ones)."""

    parent_epochs: int = setting(4, "epochs to train the parent when no --parent is given", quick=1)
    parent_lr: float = setting(0.1, "learning rate of the parent's training", cli=False)
    batch_size: int = setting(128, "batch size of the parent's training and of the final fine-tunes")
    train_limit: int | None = setting(None, "use only the first N training images", none="all", quick=12000)
    val_size: int | None = setting(2000, "validation images that score each candidate", quick=1000)
    bn_batches: int = setting(8, "training batches that recalibrate each candidate's batch norm", quick=5)
    finetune_steps: int = setting(60, "SGD steps of each candidate's fine-tune", quick=20)
    finetune_batch: int = setting(64, "batch size of each candidate's fine-tune", cli=False)
    finetune_lr: float = setting(0.01, "learning rate of each candidate's fine-tune", cli=False)
    final_epochs: int = setting(2, "epochs of the final fine-tune of the winner and the baselines", quick=1)
    final_lr: float = setting(0.02, "learning rate of the final fine-tunes", cli=False)


_DEFAULTS = ClassificationSection()


@dataclass(frozen=True)
class DataSettings:
    """Which data, and how the training set is split (shared by parent training, candidates and finals)."""

    name: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 1 / 6
    split_seed: int = 0
    train_limit: int | None = None  # use only the first N training images (quick runs)

    def load(self) -> tuple[Split, Split, Split]:
        """(train, val, test) splits."""
        if self.name != "fashion-mnist":
            raise PruneoptError(f"unknown dataset {self.name!r} for classification (available: fashion-mnist)")
        data = load_fashion_mnist(self.data_dir)
        train_split, val = train_val_split(data.train, self.val_fraction, self.split_seed)
        if self.train_limit is not None:
            train_split = Split(train_split.images[: self.train_limit], train_split.labels[: self.train_limit])
        return train_split, val, data.test


@dataclass(frozen=True)
class ClassificationSettings:
    """How every candidate is scored (JSON-able, sent to every worker); defaults are the config section's."""

    parent_dir: str
    data: DataSettings = field(default_factory=DataSettings)
    bn_batches: int = _DEFAULTS.bn_batches
    bn_batch_size: int = 64
    finetune_steps: int = _DEFAULTS.finetune_steps
    finetune_batch: int = _DEFAULTS.finetune_batch
    finetune_lr: float = _DEFAULTS.finetune_lr
    val_size: int | None = _DEFAULTS.val_size  # score on the first N validation images (None: all)
    latency: bool = False  # also measure ONNX Runtime CPU latency at batch 1 and latency_batch
    latency_batch: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassificationSettings:
        return cls(**{**d, "data": DataSettings(**d.get("data", {}))})


class ClassificationEvaluator:
    """Thin -> adaptive BN -> short fine-tune -> top-1 validation error (see the module docstring)."""

    def __init__(self, settings: ClassificationSettings | dict[str, Any]) -> None:
        self.settings = (settings if isinstance(settings, ClassificationSettings)
                         else ClassificationSettings.from_dict(settings))
        self.parent = load_subnet(self.settings.parent_dir)
        self.train, val, _ = self.settings.data.load()
        n = self.settings.val_size
        self.val = val if n is None else Split(val.images[:n], val.labels[:n])

    def evaluate(self, spec: ModelSpec, seed: int) -> EvalResult:
        s = self.settings
        t0 = time.perf_counter()
        model = thin(self.parent, spec)
        recalibrate_bn(model, self.train, s.bn_batches, s.bn_batch_size, seed)
        finetune(model, self.train, s.finetune_steps, s.finetune_batch, s.finetune_lr, seed)
        error = top1_error(model, self.val)
        wall = time.perf_counter() - t0
        lat1 = latn = None
        if s.latency:
            lat1, latn = onnx_latency_ms(model, (1, 1, *self.val.images.shape[1:]), s.latency_batch)
        return EvalResult(error, wall, lat1, latn)


def _section(cfg: ConfigView) -> ClassificationSection:
    section = cfg.section
    if not isinstance(section, ClassificationSection):
        raise TypeError(f"not a classification config: {type(section).__name__}")
    return section


class ClassificationTask:
    """See the module docstring."""

    name = "classification"
    description = ("Fashion-MNIST (--data fashion-mnist, found in --data-dir or the usual places); a candidate's "
                   "error is its top-1 validation error after adaptive BN and a short SGD fine-tune; the finals "
                   "report test accuracy. The parent is --parent's or trained in the run.")
    metric = "top-1 accuracy"
    score_name = "accuracy"
    error_label = "validation error"
    title_suffix = ""
    section = ClassificationSection
    runtime_options = frozenset({"data_dir"})

    def validate(self, cfg: ConfigView) -> None:
        c, s = cfg.common, _section(cfg)
        if c.data != "fashion-mnist":
            raise PruneoptError(f"--data {c.data!r}: --task classification knows fashion-mnist only (is it the data "
                                "of another --task?)")
        if s.parent_epochs < 1 and c.parent is None:
            raise PruneoptError("--parent-epochs must be >= 1 when no --parent is given")

    def from_command_line(self, values: dict[str, Any]) -> dict[str, Any]:
        return values

    def input_shape(self, cfg: ConfigView) -> tuple[int, int, int]:
        return INPUT_SHAPE

    def preprocess(self, cfg: ConfigView) -> Preprocess:
        return Preprocess.for_channels(INPUT_SHAPE, (MEAN,), (STD,), output="logits")

    def data(self, cfg: ConfigView, data_dir: str | None) -> DataSettings:
        return DataSettings(cfg.common.data, data_dir, train_limit=_section(cfg).train_limit)

    def check_inputs(self, cfg: ConfigView, data_dir: str | None) -> None:
        self.data(cfg, data_dir).load()  # one clear message if the data is missing

    def prepare_parent(self, ctx: RunContext, folder: Path) -> ParentResult:
        c, s = ctx.cfg.common, _section(ctx.cfg)
        train_split, val, test = self.data(ctx.cfg, ctx.data_dir).load()
        if c.parent is not None:
            model = load_subnet(c.parent)
            if model.spec.in_chans != 1 or model.spec.num_classes != NUM_CLASSES or model.spec.arch != c.arch:
                raise PruneoptError(f"--parent {c.parent} is a {model.spec.arch} for {model.spec.in_chans}-channel "
                                    f"input and {model.spec.num_classes} classes; this search needs a {c.arch} for "
                                    "1x28x28 Fashion-MNIST (10 classes)")
            source = str(Path(c.parent).resolve())
        else:
            torch.manual_seed(derive_seed(c.seed, "init"))  # weight init draws from the global generator
            model = build(get_arch(c.arch).default_spec(in_chans=INPUT_SHAPE[0], num_classes=NUM_CLASSES))
            tc = TrainConfig(epochs=s.parent_epochs, batch_size=s.batch_size, lr=s.parent_lr)
            folder.mkdir(parents=True, exist_ok=True)
            total = s.parent_epochs * (len(train_split) // s.batch_size)
            bar = ctx.progress.add_task("parent: training", total=total) if ctx.progress else None

            def tick(step: int, _total: int, loss: float) -> None:
                if bar is not None:
                    ctx.progress.update(bar, completed=step, description=f"parent: training (loss {loss:.3f})")

            train(model, train_split, tc, derive_seed(c.seed, "parent"), checkpoint=folder / "checkpoint.pt",
                  progress=tick)
            source = "trained"
        val_err = top1_error(model, val)
        test_err = top1_error(model, test)
        record = {"source": source, "val_error": val_err, "test_error": test_err, "spec": model.spec.to_dict()}
        return ParentResult(model, record, f"parent {c.arch}: val error {val_err:.4f}, test error {test_err:.4f}")

    def worker_settings(self, ctx: RunContext, parent_dir: Path) -> dict[str, Any]:
        s = _section(ctx.cfg)
        return ClassificationSettings(
            parent_dir=str(parent_dir.resolve()), data=self.data(ctx.cfg, ctx.data_dir), bn_batches=s.bn_batches,
            finetune_steps=s.finetune_steps, finetune_batch=s.finetune_batch, finetune_lr=s.finetune_lr,
            val_size=s.val_size, latency=ctx.cfg.common.latency).to_dict()

    def make_evaluator(self, settings: dict[str, Any]) -> ClassificationEvaluator:
        return ClassificationEvaluator(settings)

    def finetune_finals(self, ctx: RunContext, parent_dir: Path, parent: nn.Module,
                        models: dict[str, ModelSpec]) -> Iterator[FinalResult]:
        """``final_epochs`` epochs of SGD on the training split for each model, seeded alike; top-1 errors."""
        c, s = ctx.cfg.common, _section(ctx.cfg)
        train_split, val, test = self.data(ctx.cfg, ctx.data_dir).load()
        for name, spec in models.items():
            model = thin(parent, spec)
            fdir = ctx.root / "final" / name
            fdir.mkdir(parents=True, exist_ok=True)
            tc = TrainConfig(epochs=s.final_epochs, batch_size=s.batch_size, lr=s.final_lr, warmup_steps=0)
            total = s.final_epochs * (len(train_split) // s.batch_size)
            bar = ctx.progress.add_task(f"final fine-tune: {name}", total=total) if ctx.progress else None

            def tick(step: int, _t: int, loss: float, bar: Any = bar, name: str = name) -> None:
                if bar is not None:
                    ctx.progress.update(bar, completed=step, description=f"final fine-tune: {name} (loss {loss:.3f})")

            train(model, train_split, tc, derive_seed(c.seed, "final"), checkpoint=fdir / "checkpoint.pt",
                  progress=tick)
            yield FinalResult(name, model, {"val_error": top1_error(model, val), "test_error": top1_error(model, test)})

    def describe_error(self, error: float) -> str:
        return f"error {error:.4f}"

    def summary_extra(self, config: dict[str, Any]) -> dict[str, Any]:
        return {}

    def report_intro(self, summary: dict[str, Any]) -> list[str]:
        p = summary["parent"]
        if not p:
            return []
        return [f"Parent: val error {fmt(p['val_error'])}, test error {fmt(p['test_error'])} ({p['source']}).", ""]

    def report_finals(self, summary: dict[str, Any]) -> list[str]:
        lines = ["## Winner vs baselines (same final fine-tune)", "",
                 "| model | FLOPs fraction | MACs | params | R | val error | test error | test accuracy |",
                 "|---|---|---|---|---|---|---|---|"]
        for name in ("winner", "uniform", "global_l1"):
            f = summary["finals"].get(name)
            if f:
                lines.append(f"| {name} | {f['flops_fraction']:.3f} | {f['macs']:,} | {f['params']:,} | "
                             f"{f['ratio']:.1f} | {fmt(f['val_error'])} | {fmt(f['test_error'])} | "
                             f"{fmt(1 - f['test_error'])} |")
        lines.append("")
        return lines

    def notes(self, summary: dict[str, Any]) -> list[str]:
        return []


TASK = ClassificationTask()
