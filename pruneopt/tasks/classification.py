"""The built-in search task ``classification``: top-1 error on Fashion-MNIST (the default), CIFAR-10/100 or an image
folder.

* **data** -- ``--data`` (:mod:`.classification_inputs`, :mod:`pruneopt.data.sources`): a held-out fraction of the
  training images scores the candidates, the test images only the finals; the input (channels, size, mean/std,
  augmentation) follows the data and the parent unless ``--input``/``--mean``/``--std`` say otherwise;
* **parent** -- trained in the run (``parent_epochs`` epochs, checkpointed every epoch in ``runs/NAME/parent/``), or
  ``--parent``: a subnetwork folder or a torchvision-named state-dict file; a classifier of another class count is
  replaced and trained ``head_epochs`` epochs with the rest frozen (:mod:`.classification_parent`);
* **candidates** -- :class:`ClassificationEvaluator`, for each spec:

  1. thin the trained parent to the spec, keeping the largest-L1 filters (:func:`pruneopt.thinning.thin`);
  2. recalibrate batch norm on a few training batches (adaptive BN: train mode, no gradients);
  3. fine-tune briefly: a fixed number of SGD steps on the training split, the same budget for every candidate
     (and, with the search's default ``--seeding common``, the same seed: the same batches in the same order);
  4. score top-1 error on the validation split (never the test split): all of it, or its first ``--val-size``
     images (the parent's record says how many: ``candidate_val_images``);

* **finals** -- ``final_epochs`` epochs of SGD for the winner and each baseline, seeded alike, then top-1 test
  error.

Training runs on ``--device`` (each evaluation worker on its own GPU with ``cuda``); image files are decoded in
``--loader-workers`` processes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..baselines import final_criterion
from ..checkpoint import load_subnet
from ..common.params import parse_shape
from ..data.splits import FileSplit
from ..devices import is_cuda
from ..errors import PruneoptError
from ..evaluate import EvalResult, onnx_latency_ms
from ..loader import FASHION_MNIST, Feed, materialise
from ..models import ModelSpec
from ..preprocess import Preprocess
from ..pretrained import inspect_state_dict, is_state_file
from ..seeds import derive_seed
from ..thinning import thin
from ..train import TrainConfig, finetune, recalibrate_bn, top1_error, train
from .base import ConfigView, FinalResult, ParentResult, RunContext
from .classification_inputs import (
    DataSettings,
    ParentSource,
    feed_preprocess,
    parent_source,
    parse_floats,
    plan_feed,
)
from .classification_parent import prepare_parent, progress_bar
from .classification_report import ReportWording
from .sections import setting

V2 = "0.2"  # settings added in this version are stored only when not at their default
VAL_CACHE_BYTES = 1 << 30  # validation images decoded once per worker when they fit


def _input(text: str, option: str) -> tuple[int, int, int]:
    return parse_shape(text, option, error=PruneoptError)


@dataclass(frozen=True)
class ClassificationSection:
    """The settings of a classification search (after the common ones)."""

    parent_epochs: int = setting(4, "epochs to train the parent when no --parent is given", quick=1)
    parent_lr: float = setting(0.1, "learning rate of the parent's training", cli=False)
    batch_size: int = setting(128, "batch size of the parent's training and of the final fine-tunes")
    train_limit: int | None = setting(None, "use only N training images", none="all", quick=12000)
    val_size: int | None = setting(None, "validation images that score each candidate (the first N; the report "
                                   "states it)", none="the whole validation split", quick=1000)
    bn_batches: int = setting(8, "training batches that recalibrate each candidate's batch norm", quick=5)
    finetune_steps: int = setting(60, "SGD steps of each candidate's fine-tune", quick=20)
    finetune_batch: int = setting(64, "batch size of each candidate's fine-tune", cli=False)
    finetune_lr: float = setting(0.01, "learning rate of each candidate's fine-tune", cli=False)
    final_epochs: int = setting(2, "epochs of the final fine-tune of the winner and the baselines", quick=1)
    final_lr: float = setting(0.02, "learning rate of the final fine-tunes", cli=False)
    val_fraction: float = setting(1 / 6, "fraction of the training images held out (class-stratified, seeded) to "
                                  "score candidates; a one-tree image folder first gives the same fraction of its "
                                  "images to the test split", since=V2, shown="1/6")
    input: tuple[int, int, int] | None = setting(None, "the network's input CxHxW (C: 1 grey, 3 RGB)", metavar="CxHxW",
                                                 parse=_input, since=V2, none="the data's size; channels of --parent, "
                                                 "else of the data")
    mean: tuple[float, ...] | None = setting(None, "input normalisation mean, one value or one per channel",
                                             metavar="M|M1,M2,M3", parse=parse_floats, since=V2,
                                             none="the --parent folder's, ImageNet's for a colour state-dict "
                                             "parent, else the data's")
    std: tuple[float, ...] | None = setting(None, "input normalisation standard deviation, like --mean",
                                            metavar="S|S1,S2,S3", parse=parse_floats, since=V2, none="as --mean")
    head_epochs: int = setting(1, "epochs training a new classifier head, the rest frozen, when --parent has "
                               "another class count than the data", since=V2)
    head_lr: float = setting(0.1, "learning rate of the new head's training", cli=False, since=V2)
    skip_bad_images: bool = setting(False, "leave undecodable images out (counted in the report) instead of "
                                    "stopping at the first", flag=True, since=V2)


_DEFAULTS = ClassificationSection()


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
    feed: dict[str, Any] | None = None  # the input (Feed.to_dict); None: Fashion-MNIST's
    device: str = "cpu"  # each evaluation worker's own (set by the pool)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassificationSettings:
        return cls(**{**d, "data": DataSettings(**d.get("data", {}))})

    def make_feed(self) -> Feed:
        return (FASHION_MNIST if self.feed is None else Feed.from_dict(self.feed)).on(self.device)


class ClassificationEvaluator:
    """Thin -> adaptive BN -> short fine-tune -> top-1 validation error (see the module docstring)."""

    def __init__(self, settings: ClassificationSettings | dict[str, Any]) -> None:
        self.settings = (settings if isinstance(settings, ClassificationSettings)
                         else ClassificationSettings.from_dict(settings))
        self.feed = self.settings.make_feed()
        if is_cuda(self.feed.device) and ":" in self.feed.device:
            torch.cuda.set_device(torch.device(self.feed.device))  # this worker's own GPU
        self.parent = load_subnet(self.settings.parent_dir)
        self.train, val, _ = self.settings.data.load()
        n = self.settings.val_size
        self.val = val if n is None else val.take(slice(None, n))
        c, (h, w) = self.feed.channels, self.feed.size
        if isinstance(self.val, FileSplit) and len(self.val) * c * h * w <= VAL_CACHE_BYTES:
            self.val = materialise(self.val, self.feed)  # decoded once, scored by every candidate

    def evaluate(self, spec: ModelSpec, seed: int) -> EvalResult:
        s, feed = self.settings, self.feed
        t0 = time.perf_counter()
        model = thin(self.parent, spec)
        recalibrate_bn(model, self.train, s.bn_batches, s.bn_batch_size, seed, feed=feed)
        finetune(model, self.train, s.finetune_steps, s.finetune_batch, s.finetune_lr, seed, feed=feed)
        error = top1_error(model, self.val, feed=feed)
        wall = time.perf_counter() - t0
        lat1 = latn = None
        if s.latency:
            cpu_model = copy.deepcopy(model).cpu().float() if is_cuda(feed.device) else model
            lat1, latn = onnx_latency_ms(cpu_model, (1, feed.channels, *feed.size), s.latency_batch)
        return EvalResult(error, wall, lat1, latn)


def _section(cfg: ConfigView) -> ClassificationSection:
    section = cfg.section
    if not isinstance(section, ClassificationSection):
        raise TypeError(f"not a classification config: {type(section).__name__}")
    return section


class ClassificationTask(ReportWording):
    """See the module docstring."""

    name = "classification"
    description = ("top-1 error of image classification. --data is fashion-mnist (the default; its files found in "
                   "--data-dir or the usual places), cifar10 or cifar100 (in --data-dir), or a folder: CIFAR's "
                   "python-pickle files, or an image folder (ROOT/train/CLASS/* with ROOT/val/CLASS/*, or one "
                   "ROOT/CLASS/* tree split by --val-fraction). A candidate's error is its top-1 validation error "
                   "after adaptive BN and a short SGD fine-tune; the finals report test accuracy. The parent is "
                   "trained in the run, or --parent: a subnetwork folder or a torchvision-named state-dict file "
                   "(--arch from the file; a head of another class count is replaced and trained --head-epochs).")
    metric = "top-1 accuracy"
    score_name = "accuracy"
    error_label = "validation error"
    title_suffix = ""
    section = ClassificationSection
    runtime_options = frozenset({"data_dir", "device", "loader_workers"})

    def validate(self, cfg: ConfigView) -> None:
        c, s = cfg.common, _section(cfg)
        checks = [
            (s.parent_epochs >= 1 or c.parent is not None, "--parent-epochs must be >= 1 when no --parent is given"),
            (0 < s.val_fraction < 0.5, f"--val-fraction must be in (0, 0.5), got {s.val_fraction}"),
            (s.head_epochs >= 1, f"--head-epochs must be >= 1, got {s.head_epochs}"),
            (s.batch_size >= 2 and s.finetune_batch >= 2, "--batch-size must be >= 2"),
            (s.val_size is None or s.val_size >= 1, f"--val-size must be >= 1, got {s.val_size}"),
            (s.train_limit is None or s.train_limit >= s.batch_size,
             f"--train-limit must be at least --batch-size ({s.batch_size}), got {s.train_limit}"),
            (s.input is None or min(s.input[1:]) >= 8, f"--input must be at least 8x8 pixels, got {s.input}"),
        ]
        for ok, message in checks:
            if not ok:
                raise PruneoptError(message)

    def from_command_line(self, values: dict[str, Any]) -> dict[str, Any]:
        """A folder ``--data`` is stored resolved; without ``--arch``, the parent's architecture."""
        data = values.get("data")
        if data is not None and Path(data).is_dir():
            values = {**values, "data": str(Path(data).resolve())}
        parent = values.get("parent")
        if "arch" not in values and parent is not None:
            arch = (inspect_state_dict(parent).arch if is_state_file(parent)
                    else ModelSpec.load(Path(parent) / "spec.json").arch)
            values = {**values, "arch": arch}
        return values

    # -- what the search reads ------------------------------------------------------------------------------
    def data(self, cfg: ConfigView, data_dir: str | None = None) -> DataSettings:
        s = _section(cfg)
        return DataSettings(cfg.common.data, data_dir, s.val_fraction, train_limit=s.train_limit)

    def source(self, cfg: ConfigView) -> ParentSource:
        """What --parent is (read, never trained), or the network to train."""
        c, s = cfg.common, _section(cfg)
        facts = self.data(cfg).facts()
        return parent_source(c.parent, c.arch, s.input[0] if s.input else facts.channels, facts.num_classes)

    def feed(self, cfg: ConfigView, device: str = "cpu", loader_workers: int = 0) -> Feed:
        """The input of the search's networks (a function of the config alone: a named data set's facts are known
        without its files)."""
        s = _section(cfg)
        feed = plan_feed(self.data(cfg).facts(), self.source(cfg), s.input, s.mean, s.std, s.skip_bad_images)
        return Feed.from_dict({**feed.to_dict(), "device": device, "loader_workers": loader_workers})

    def input_shape(self, cfg: ConfigView) -> tuple[int, int, int]:
        feed = self.feed(cfg)
        return feed.channels, feed.size[0], feed.size[1]

    def preprocess(self, cfg: ConfigView) -> Preprocess:
        return feed_preprocess(self.feed(cfg))

    def check_inputs(self, cfg: ConfigView, data_dir: str | None) -> None:
        """The data (layout, classes, a sample decoded), the parent (file, keys, shapes) and the input they imply:
        one clear line each, before anything is trained."""
        settings, s = self.data(cfg, data_dir), _section(cfg)
        data = settings.open()
        if data.num_classes < 2:
            raise PruneoptError(f"--data {cfg.common.data}: {data.num_classes} class; classification needs two")
        train_split, val, _ = settings.load()
        need = max(s.batch_size, s.finetune_batch)
        if len(train_split) < need or len(val) < 1:
            raise PruneoptError(f"--data {cfg.common.data}: {len(train_split)} training images after holding out "
                                f"{len(val)} for validation; a batch needs {need} (--batch-size, and 64 for each "
                                "candidate's fine-tune)")
        self.feed(cfg)

    def planned_parent(self, cfg: ConfigView, data_dir: str | None) -> ModelSpec:
        """The parent's spec as the search will have it (the data's class count), before any training."""
        spec = self.source(cfg).spec
        n = self.data(cfg).facts().num_classes
        return ModelSpec(spec.arch, spec.widths, spec.in_chans, n, spec.last_stride, spec.features_only)

    def prepare_parent(self, ctx: RunContext, folder: Path) -> ParentResult:
        settings = self.data(ctx.cfg, ctx.data_dir)
        data = settings.open()
        return prepare_parent(ctx, folder, self.source(ctx.cfg), settings.load(), self._run_feed(ctx),
                              data.num_classes, _section(ctx.cfg), data.describe())

    def _run_feed(self, ctx: RunContext) -> Feed:
        return self.feed(ctx.cfg, ctx.device, int(getattr(ctx, "loader_workers", 0) or 0))

    def worker_settings(self, ctx: RunContext, parent_dir: Path) -> dict[str, Any]:
        s = _section(ctx.cfg)
        feed = self._run_feed(ctx)
        return ClassificationSettings(
            parent_dir=str(parent_dir.resolve()), data=self.data(ctx.cfg, ctx.data_dir), bn_batches=s.bn_batches,
            finetune_steps=s.finetune_steps, finetune_batch=s.finetune_batch, finetune_lr=s.finetune_lr,
            val_size=s.val_size, latency=ctx.cfg.common.latency,
            feed=feed.to_dict(), device=ctx.device).to_dict()

    def make_evaluator(self, settings: dict[str, Any]) -> ClassificationEvaluator:
        return ClassificationEvaluator(settings)

    def finetune_finals(self, ctx: RunContext, parent_dir: Path, parent: nn.Module,
                        models: dict[str, ModelSpec]) -> Iterator[FinalResult]:
        """``final_epochs`` epochs of SGD on the training split for each model, seeded alike; top-1 errors."""
        c, s = ctx.cfg.common, _section(ctx.cfg)
        train_split, val, test = self.data(ctx.cfg, ctx.data_dir).load()
        feed = self._run_feed(ctx)
        for name, spec in models.items():
            model = thin(parent, spec, final_criterion(name))
            fdir = ctx.root / "final" / name
            fdir.mkdir(parents=True, exist_ok=True)
            tc = TrainConfig(epochs=s.final_epochs, batch_size=s.batch_size, lr=s.final_lr, warmup_steps=0)
            total = s.final_epochs * (len(train_split) // s.batch_size)
            train(model, train_split, tc, derive_seed(c.seed, "final"), checkpoint=fdir / "checkpoint.pt",
                  progress=progress_bar(ctx, f"final fine-tune: {name}", total), feed=feed)
            figures = {"val_error": top1_error(model, val, feed=feed), "test_error": top1_error(model, test, feed=feed)}
            yield FinalResult(name, model.cpu(), figures)



TASK = ClassificationTask()
