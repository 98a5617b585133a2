"""Candidate evaluation, whatever the task: an evaluator turns a sampled spec into one error number, the same way
for every candidate.

An :class:`Evaluator` is built once per worker process (it loads the parent and the data) by its task's
``make_evaluator(settings)`` (:mod:`pruneopt.tasks`), from JSON-able settings, so the same settings travel to local
worker processes and to Ray actors. It then scores specs: ``evaluate(spec, seed) -> EvalResult``. All randomness
comes from the candidate's seed, so a candidate's error does not depend on which worker ran it, in what order, or
whether the run was interrupted.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .models import ModelSpec


@dataclass(frozen=True)
class EvalResult:
    error: float  # the score the search minimises (top-1 error, or 1 - mAP for re-ID)
    wall_s: float
    latency_b1_ms: float | None = None
    latency_bn_ms: float | None = None


class Evaluator(Protocol):
    def evaluate(self, spec: ModelSpec, seed: int) -> EvalResult: ...


def onnx_latency_ms(model: torch.nn.Module, input_shape: tuple[int, ...], batch: int, reps: int = 20
                    ) -> tuple[float, float]:
    """Median ONNX Runtime CPU latency (ms) of ``model`` at batch 1 and ``batch``, on one intra-op thread.

    Exported with the legacy (TorchScript) exporter, which takes about a second where the dynamo exporter takes
    ten; the graphs are equivalent for these plain conv nets.
    """
    # lazy: ONNX export and ONNX Runtime are needed only when a search measures latency (--latency)
    from export.onnx import export_onnx
    from export.runners import make_runner

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        export_onnx(model.eval(), path, (input_shape[1], input_shape[2], input_shape[3]), exporter="legacy",
                    verify=False)
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
