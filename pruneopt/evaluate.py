"""Candidate evaluation: turn a sampled spec into one error number, the same way for every candidate.

An :class:`Evaluator` is built once per worker process (it loads the parent and the data) and then scores specs:
``evaluate(spec, seed) -> EvalResult``. Evaluators are registered by task name (:func:`register_evaluator`) and
built from a JSON-able settings dict, so the same settings travel to local worker processes and to Ray actors.

The classification evaluator (task ``"classification"``) does, for each spec:

1. thin the trained parent to the spec, keeping the largest-L1 filters (:func:`pruneopt.thinning.thin`);
2. recalibrate batch norm on a few training batches (adaptive BN: train mode, no gradients);
3. fine-tune briefly: a fixed number of SGD steps on the training split, the same budget for every candidate;
4. score top-1 error on the validation split (never the test split).

The re-ID evaluator (task ``"reid"``, :mod:`pruneopt.evaluate_reid`, imported on first use) thins the parent backbone,
fine-tunes it briefly without labels (:func:`reidserve.train.finetune_and_score`) and scores ``1 - mAP``.

All randomness comes from the candidate's seed, so a candidate's error does not depend on which worker ran it,
in what order, or whether the run was interrupted.
"""

from __future__ import annotations

import importlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .checkpoint import load_subnet
from .data import load_fashion_mnist, train_val_split
from .data.fashion_mnist import Split
from .errors import PruneoptError
from .models import ModelSpec
from .thinning import thin
from .train import finetune, recalibrate_bn, top1_error


@dataclass(frozen=True)
class EvalResult:
    error: float  # the score the search minimises (top-1 error, or 1 - mAP for re-ID)
    wall_s: float
    latency_b1_ms: float | None = None
    latency_bn_ms: float | None = None


class Evaluator(Protocol):
    def evaluate(self, spec: ModelSpec, seed: int) -> EvalResult: ...


_EVALUATORS: dict[str, Callable[[dict[str, Any]], Evaluator]] = {}
# tasks whose evaluator lives in a module imported on first use (``import pruneopt`` stays free of reidserve)
_LAZY_EVALUATORS: dict[str, str] = {"reid": "pruneopt.evaluate_reid"}


def register_evaluator(task: str, factory: Callable[[dict[str, Any]], Evaluator]) -> None:
    """Make ``make_evaluator(task, settings)`` build ``factory(settings)`` (e.g. a re-ID evaluator)."""
    _EVALUATORS[task] = factory


def make_evaluator(task: str, settings: dict[str, Any]) -> Evaluator:
    """The evaluator of ``task`` built from ``settings`` (importing a lazily registered task's module first)."""
    if task not in _EVALUATORS and task in _LAZY_EVALUATORS:
        importlib.import_module(_LAZY_EVALUATORS[task])  # registers itself
    if task not in _EVALUATORS:
        known = sorted({*_EVALUATORS, *_LAZY_EVALUATORS})
        raise PruneoptError(f"unknown task {task!r}; choose one of {', '.join(known)}")
    return _EVALUATORS[task](settings)


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
        train, val = train_val_split(data.train, self.val_fraction, self.split_seed)
        if self.train_limit is not None:
            train = Split(train.images[: self.train_limit], train.labels[: self.train_limit])
        return train, val, data.test


@dataclass(frozen=True)
class ClassificationSettings:
    parent_dir: str
    data: DataSettings = field(default_factory=DataSettings)
    bn_batches: int = 8
    bn_batch_size: int = 64
    finetune_steps: int = 50
    finetune_batch: int = 64
    finetune_lr: float = 0.01
    val_size: int | None = 2000  # score on the first N validation images (None: all)
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
            lat1, latn = onnx_latency_ms(model, (1, *_input_shape(self.val)), s.latency_batch)
        return EvalResult(error, wall, lat1, latn)


def _input_shape(split: Split) -> tuple[int, int, int]:
    return (1, *split.images.shape[1:])


def onnx_latency_ms(model: torch.nn.Module, input_shape: tuple[int, ...], batch: int, reps: int = 20
                    ) -> tuple[float, float]:
    """Median ONNX Runtime CPU latency (ms) of ``model`` at batch 1 and ``batch``, on one intra-op thread.

    Exported with the legacy (TorchScript) exporter, which takes about a second where the dynamo exporter takes
    ten; the graphs are equivalent for these plain conv nets.
    """
    from export.onnx import export_onnx  # the export package owns ONNX export and the runners
    from export.runners import make_runner

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        export_onnx(model.eval(), path, tuple(input_shape[1:]), exporter="legacy", verify=False)
        runner = make_runner("ort-cpu", path, threads=1)
        medians = []
        try:
            for b in (1, batch):
                x = np.random.default_rng(0).standard_normal((b, *input_shape[1:]), dtype=np.float32)
                runner.run(x)
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    runner.run(x)
                    times.append((time.perf_counter() - t0) * 1e3)
                medians.append(float(np.median(times)))
        finally:
            runner.close()
    return medians[0], medians[1]


register_evaluator("classification", ClassificationEvaluator)
