"""The model side of the service: load an exported model and run it on micro-batches of concurrent requests.

:func:`load_model` reads the pruneopt metadata of an ONNX file (or of a TensorRT engine's sidecar) -- or, for an
ONNX model without any, takes the input facts from the command line and checks them on one batch
(:mod:`.model_input`) -- and makes an :mod:`export.runners` runner: ONNX Runtime on the CPU by default, ONNX Runtime
CUDA when it is available, TensorRT for ``.engine`` / ``.plan`` files. No torch is imported on this path.

:class:`Embedder` batches requests: each request puts its preprocessed images on an ``asyncio.Queue``; one
collector task takes the first waiting request, adds more until ``max_batch`` images or ``max_wait_ms`` have
passed, and runs the batch in a single worker thread (the event loop stays free); while that runs, new requests
queue up and form the next batch. Outputs are L2-normalised here whatever the model emits (an embedding, or the
logits of a classifier such as a ``pruneopt search`` winner), so inner products are cosine similarities.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.metadata import ExportMetadata
from pruneopt.errors import PruneoptError

from .batching import MicroBatcher
from .model_input import ModelLoadError, assume_input, check_agrees, described_input, read_model_input
from .settings import GivenInput

if TYPE_CHECKING:
    from .middleware import ServiceMetrics

__all__ = ["EmbedError", "Embedder", "LoadedModel", "ModelLoadError", "load_model", "pick_runtime"]

RUNTIME_CHOICES = ("auto", "ort-cpu", "ort-cuda", "ort-trt", "trt")


class EmbedError(RuntimeError):
    """The model failed on a batch or produced unusable output."""


@dataclass
class LoadedModel:
    """A runner and what the service needs to know about its model."""

    runner: Any
    meta: ExportMetadata
    path: Path
    runtime: str
    model_id: str
    max_batch: int
    assumed: bool = False  # the input facts came from the command line (an ONNX model without pruneopt metadata)

    def describe(self) -> dict[str, Any]:
        m = self.meta
        info: dict[str, Any] = {}
        try:
            info = dict(self.runner.info())
        except Exception:  # a runner's info() is informational only
            info = {}
        return {"path": str(self.path), "arch": m.arch, "spec_hash": m.spec_hash, "model_id": self.model_id,
                "input_shape": list(m.input_shape), "color": m.color, "output_kind": m.output_kind,
                "output_dim": m.output_dim, "normalized_by_model": m.normalized, "runtime": self.runtime,
                "input_from": "command line" if self.assumed else "pruneopt metadata",
                "mean": list(m.mean), "std": list(m.std),
                "providers": list(getattr(self.runner, "providers", [])), "runner": info}


def pick_runtime(path: Path, runtime: str = "auto") -> str:
    """``auto``: ``trt`` for engines; ``ort-cuda`` for ONNX when ONNX Runtime has CUDA; else ``ort-cpu``."""
    if runtime not in RUNTIME_CHOICES:
        raise ModelLoadError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    engine = path.suffix in (".engine", ".plan")
    if runtime != "auto":
        if engine != (runtime == "trt"):
            raise ModelLoadError(f"--runtime {runtime} does not run {path.name}: the trt runtime takes TensorRT "
                                 ".engine/.plan files built by `pruneopt export --trt`, the ort-* runtimes .onnx")
        return runtime
    if engine:
        return "trt"
    from export.runners import runtime_available  # lazy: the runtimes (onnxruntime, TensorRT) load with the model

    return "ort-cuda" if runtime_available("ort-cuda")[0] else "ort-cpu"


def load_model(path: str | Path, runtime: str = "auto", *, threads: int | None = None, max_batch: int = 32,
               given: GivenInput | None = None) -> LoadedModel:
    """Read the model's metadata and start a runner for it (see the module docstring). ``given``: the input facts
    from ``--input``/``--mean``/``--std``/``--colour``, needed for an ONNX model without pruneopt metadata (checked
    on one batch, :func:`.model_input.assume_input`) and refused where they contradict a pruneopt model's."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"--model {p} does not exist; export one with `pruneopt export PATH --onnx --out "
                             f"{p.name}`")
    meta, model_id = read_model_input(p)
    if meta is None:
        described_input(given, p)  # the flags are there and fit together, before a runner starts
    else:
        if given is not None:
            check_agrees(meta, given, p)
        c = meta.input_shape[0]
        if (c, meta.color) not in ((3, "RGB"), (1, "L")):
            raise ModelLoadError(f"{p}: the service feeds RGB (3-channel) or grayscale (1-channel, color L) images; "
                                 f"this model takes {c} channels ({meta.color})")
        if meta.layout != "NCHW":
            raise ModelLoadError(f"{p}: input layout {meta.layout} is not supported (export gives NCHW)")
    kind = pick_runtime(p, runtime)
    from export.runners import make_runner  # lazy: the runtimes (onnxruntime, TensorRT) load with the model

    try:
        # spin=False: idle ONNX Runtime threads must not busy-wait on the cores the HTTP server needs
        runner = make_runner(kind, p, threads=threads, strict=True, spin=False)
    except PruneoptError as exc:
        raise ModelLoadError(f"{p}: {exc}") from exc
    assumed = meta is None
    if meta is None:
        try:
            meta = assume_input(p, runner, given)
        except BaseException:
            runner.close()
            raise
    limit = min(int(max_batch), int(meta.max_batch or max_batch), int(getattr(runner, "max_batch", max_batch)))
    return LoadedModel(runner, meta, p, kind, model_id, max(1, limit), assumed)


@dataclass
class _Job:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued: float


class Embedder(MicroBatcher[_Job]):
    """Micro-batching front of a :class:`LoadedModel` (see the module docstring). Use from one event loop."""

    def __init__(self, model: LoadedModel, *, max_wait_ms: float = 2.0, metrics: ServiceMetrics | None = None) -> None:
        super().__init__(model.max_batch, max_wait_ms, "infer")
        self.model = model
        self.meta = model.meta
        self.dim = int(model.meta.output_dim)
        self.metrics = metrics
        self.batches = 0
        self.images = 0
        self.failures = 0

    async def stop(self) -> None:
        await super().stop()
        self.model.runner.close()

    async def embed(self, x: np.ndarray) -> np.ndarray:
        """``[n, C, H, W]`` preprocessed images -> ``[n, dim]`` L2-normalised ``float32`` embeddings."""
        if self._queue is None or not self.running:
            raise EmbedError("the embedding worker is not running")
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        if len(x) > self.max_batch:
            parts = [x[i:i + self.max_batch] for i in range(0, len(x), self.max_batch)]
            return np.concatenate(await asyncio.gather(*(self.embed(p) for p in parts)))
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._put(_Job(x, future, time.perf_counter()))
        return await future

    def _run(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        y = np.asarray(self.model.runner.run(x), dtype=np.float32)
        if self.metrics is not None:
            self.metrics.inference.observe(time.perf_counter() - t0)
        if y.ndim != 2 or y.shape != (len(x), self.dim):
            raise EmbedError(f"the model returned shape {list(y.shape)} for {len(x)} images; expected "
                             f"[{len(x)}, {self.dim}] (its metadata's output_dim)")
        if not np.isfinite(y).all():
            raise EmbedError("the model produced NaN or infinite outputs")
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return y / np.maximum(norms, np.float32(1e-12))

    async def _collect(self) -> None:
        assert self._queue is not None
        carry: _Job | None = None
        stopping = False
        while not stopping:
            job = carry if carry is not None else await self._queue.get()
            carry = None
            if job is None:
                break
            jobs, carry, stopping = await self._gather(job, lambda j: len(j.x))
            jobs = [j for j in jobs if not j.future.done()]  # callers that went away
            if not jobs:
                continue
            x = jobs[0].x if len(jobs) == 1 else np.concatenate([j.x for j in jobs])
            now = time.perf_counter()
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(x))
                for j in jobs:
                    self.metrics.queue_wait.observe(now - j.queued)
            try:
                y = await self._in_worker(self._run, x)
            except Exception as exc:
                self.failures += 1
                err = exc if isinstance(exc, EmbedError) else EmbedError(f"the model failed: {exc}")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(err)
                continue
            self.batches += 1
            self.images += len(x)
            if self.metrics is not None:
                self.metrics.images.inc(len(x))
            start = 0
            for j in jobs:
                end = start + len(j.x)
                if not j.future.done():
                    j.future.set_result(y[start:end])
                start = end
        if carry is not None and not carry.future.done():
            carry.future.set_exception(EmbedError("the service is shutting down"))

    def stats(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000.0, "batches": self.batches,
                "images": self.images, "mean_batch": round(self.images / self.batches, 2) if self.batches else None,
                "failures": self.failures, "queued": self.queued}
