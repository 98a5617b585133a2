"""A third search task for the tests, registered through a test entry point (no edit to pruneopt): nothing is
trained; a candidate's error is ``|log(R / target_ratio)|`` plus seeded noise, R = FLOPs / params at 3x32x32."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pruneopt.checkpoint import load_subnet
from pruneopt.complexity import count
from pruneopt.errors import PruneoptError
from pruneopt.evaluate import EvalResult
from pruneopt.models import ModelSpec, build, get_arch
from pruneopt.preprocess import Preprocess
from pruneopt.seeds import derive_seed
from pruneopt.tasks.base import ConfigView, FinalResult, ParentResult, RunContext
from pruneopt.tasks.sections import setting
from pruneopt.thinning import thin

HW = (32, 32)


@dataclass(frozen=True)
class ToySection:
    target_ratio: float = setting(100.0, "R = FLOPs / params at which the toy error is lowest", quick=80.0)
    noise: float = setting(0.01, "standard deviation of the toy error's seeded noise")


def toy_error(spec: ModelSpec, target: float, noise: float, seed: int) -> float:
    c = count(spec, HW)
    return abs(math.log(c.ratio / target)) + noise * float(np.random.default_rng(seed).standard_normal())


class ToyEvaluator:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        load_subnet(settings["parent_dir"])  # a worker can read the parent the driver saved

    def evaluate(self, spec: ModelSpec, seed: int) -> EvalResult:
        t0 = time.perf_counter()
        error = toy_error(spec, self.settings["target_ratio"], self.settings["noise"], seed)
        return EvalResult(error, time.perf_counter() - t0)


class ToyTask:
    name = "toy"
    description = "a toy task for the tests: nothing is trained, the error is |log(R / target)| plus noise."
    metric = "toy score"
    score_name = "toy score"
    error_label = "toy error"
    title_suffix = " (toy)"
    section = ToySection
    runtime_options: frozenset[str] = frozenset()

    def validate(self, cfg: ConfigView) -> None:
        if cfg.section.target_ratio <= 0:
            raise PruneoptError(f"--target-ratio must be > 0, got {cfg.section.target_ratio}")

    def from_command_line(self, values: dict[str, Any]) -> dict[str, Any]:
        return values

    def input_shape(self, cfg: ConfigView) -> tuple[int, int, int]:
        return (3, *HW)

    def preprocess(self, cfg: ConfigView) -> Preprocess:
        return Preprocess.for_channels(self.input_shape(cfg), (0.5,) * 3, (0.25,) * 3)

    def check_inputs(self, cfg: ConfigView, data_dir: str | None) -> None:
        pass

    def prepare_parent(self, ctx: RunContext, folder: Path) -> ParentResult:
        torch.manual_seed(derive_seed(ctx.cfg.common.seed, "init"))
        model = build(get_arch(ctx.cfg.common.arch).default_spec(in_chans=3, num_classes=10))
        err = toy_error(model.spec, ctx.cfg.section.target_ratio, 0.0, 0)
        record = {"source": "random", "val_error": err, "test_error": err, "spec": model.spec.to_dict()}
        return ParentResult(model, record, f"toy parent: error {err:.4f}")

    def worker_settings(self, ctx: RunContext, parent_dir: Path) -> dict[str, Any]:
        s = ctx.cfg.section
        return {"parent_dir": str(parent_dir), "target_ratio": s.target_ratio, "noise": s.noise}

    def make_evaluator(self, settings: dict[str, Any]) -> ToyEvaluator:
        return ToyEvaluator(settings)

    def finetune_finals(self, ctx: RunContext, parent_dir: Path, parent: nn.Module,
                        models: dict[str, ModelSpec]) -> Iterator[FinalResult]:
        s = ctx.cfg.section
        for name, spec in models.items():
            err = toy_error(spec, s.target_ratio, 0.0, 0)
            yield FinalResult(name, thin(parent, spec), {"val_error": err, "test_error": err})

    def describe_error(self, error: float) -> str:
        return f"toy error {error:.4f}"

    def summary_extra(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"toy": {"target_ratio": config["target_ratio"]}}

    def report_intro(self, summary: dict[str, Any]) -> list[str]:
        return ["Toy task: nothing was trained.", ""]

    def report_finals(self, summary: dict[str, Any]) -> list[str]:
        return ["## Toy finals", "", *(f"- {name}: {f['test_error']:.4f}" for name, f in summary["finals"].items()),
                ""]

    def notes(self, summary: dict[str, Any]) -> list[str]:
        return ["toy figures mean nothing"]


TASK = ToyTask()
