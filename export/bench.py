"""Side-by-side runtime benchmarks of one or more networks (``pruneopt bench``).

Every (model, runtime) pair gets a runner (:mod:`export.runners`); models given as subnetwork folders are exported
to ONNX (verified at batch 1) and, for ``trt``, built into an engine, inside a work folder. Then, for each batch
size, the runners are timed *interleaved*: a warm-up, then rounds in which every runner runs the same batch once,
the starting runner rotating each round, so that load from other processes on a shared machine hits all of them
alike. A round count (``iters``) or a time budget (``seconds`` per runner per batch size) ends the measurement.

Reported per (model, runtime, batch): median, p90 and p99 latency of one ``run`` call (host input to host output),
throughput ``batch / median`` in images/s, and peak memory: with ``memory=True`` each (model, runtime) runs its
batch sizes once more in a fresh subprocess, which reports the growth of its peak resident set (``VmHWM``) over
its size right after importing the runtime (weights, workspace, activations, arenas), and on GPU the device memory
it took (cudaMemGetInfo, or torch's reserved memory). With two or more models, speedups are relative to the first,
next to its FLOPs (MAC) ratio. Runtimes that cannot run here are reported as skipped with the reason.

Threads are explicit: ``threads`` (default: all cores) sets torch's intra-op threads and ONNX Runtime's
``intra_op_num_threads``. Neither runtime's idle threads should spin-wait, or they steal the cores from the runtime
timed next: ONNX Runtime's spinning is off unless ``spin=True``, and torch's OpenMP threads need
``OMP_WAIT_POLICY=PASSIVE`` in the environment *before* torch is loaded (``pruneopt bench`` re-runs itself with
it; on a 2-core machine under load, torch eager interleaved with ONNX Runtime ran a resnet20 100x slower without
it). All of it is recorded in the result.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pruneopt.common.threads import torch_threads
from pruneopt.errors import PruneoptError

from .bench_results import BenchModel, BenchResult, Cell
from .errors import ExportError, OnnxFileError, RuntimeUnavailableError
from .inputs import realistic_inputs
from .memory_probe import probe_memory
from .metadata import default_mean_std, read_metadata
from .runners import Runner, make_runner, resolve_kind, runtime_available
from .tensorrt import BatchProfile, EngineConfig, build_engine, read_sidecar

__all__ = ["BenchModel", "BenchResult", "Cell", "describe_model", "probe_memory", "run_bench"]

logger = logging.getLogger(__name__)

Log = Callable[[str], None]
Opened = tuple[BenchModel, str, Runner, Path]  # a model, its runtime, the runner and the artefact it runs


# -- models --------------------------------------------------------------------------------------------------
def describe_model(path: str | Path, label: str | None = None) -> BenchModel:
    """A :class:`BenchModel` from a subnetwork folder, a ``spec.json``, an ``.onnx`` or an ``.engine``."""
    p = Path(path)
    if p.suffix == ".onnx":
        if not p.is_file():
            raise OnnxFileError(f"{p} does not exist")
        try:
            meta = read_metadata(p)
        except OnnxFileError as exc:
            if "no pruneopt metadata" not in str(exc):
                raise
            return BenchModel(label or p.stem, onnx=p)
        return BenchModel(label or p.stem, onnx=p, input_shape=meta.input_shape, macs=meta.macs or None,
                          arch=meta.arch, spec_hash=meta.spec_hash, normalize=meta.normalized)
    if p.suffix in (".engine", ".plan"):
        side = read_sidecar(p)
        macs = side.get("metadata", {}).get("pruneopt.macs")
        return BenchModel(label or p.stem, engine=p, input_shape=tuple(side["input_shape"]),
                          macs=int(macs) if macs else None, arch=side.get("metadata", {}).get("pruneopt.arch"))
    if p.is_file() and p.suffix == ".json":
        p = p.parent
    if not p.is_dir():
        raise ExportError(f"{p} is not a model: give a model folder (a subnetwork folder, spec.json + "
                          "weights.safetensors, or another format pruneopt export reads), an .onnx exported by "
                          "`pruneopt export`, or a TensorRT .engine")
    from pruneopt.model_formats import load_model_folder  # lazy: torch, which benchmarking exported files does not need
    from pruneopt.models import get_arch

    try:
        loaded = load_model_folder(p)
    except ExportError:
        raise
    except PruneoptError as exc:
        raise ExportError(str(exc)) from None
    spec, pre = loaded.spec, loaded.preprocess
    shape = pre.input_shape if pre is not None else (spec.in_chans, *get_arch(spec.arch).default_input[1:])
    name = label or (p.name if p.name not in ("", ".") else spec.arch)
    return BenchModel(name, folder=loaded.folder, input_shape=shape, arch=spec.arch,
                      spec_hash=spec.hash(), normalize=bool(pre is not None and pre.normalized))


def _macs(model: BenchModel, shape: tuple[int, int, int]) -> int | None:
    if model.folder is not None:
        from pruneopt.complexity import count  # lazy: torch (see describe_model)
        from pruneopt.models import ModelSpec

        return count(ModelSpec.load(model.folder), shape[1:]).macs
    return model.macs


def _unique_labels(models: list[BenchModel]) -> None:
    seen: dict[str, int] = {}
    for m in models:
        if m.label in seen:
            seen[m.label] += 1
            m.label = f"{m.label}#{seen[m.label]}"
        else:
            seen[m.label] = 1


# -- preparation -----------------------------------------------------------------------------------------------
def _prepare_onnx(model: BenchModel, shape: tuple[int, int, int], work: Path, exporter: str, log: Log) -> Path:
    if model.onnx is not None:
        return model.onnx
    if model.folder is None:
        raise RuntimeUnavailableError("ONNX Runtime needs an .onnx or a subnetwork folder to export")
    from .onnx import export_onnx, load_model  # lazy: torch, which benchmarking exported files does not need

    out = work / f"{model.label}-{'x'.join(map(str, shape))}.onnx"
    log(f"exporting {model.label} to {out} ({exporter} exporter, verified at batch 1)")
    export_onnx(load_model(model.folder), out, shape, exporter=exporter, normalize=model.normalize, batches=(1,))
    model.onnx = out
    return out


def _prepare_engine(model: BenchModel, shape: tuple[int, int, int], batches: Sequence[int], work: Path,
                    exporter: str, fp16: bool, log: Log) -> Path:
    if model.engine is not None:
        return model.engine
    onnx_path = _prepare_onnx(model, shape, work, exporter, log)
    out = work / f"{model.label}{'-fp16' if fp16 else ''}.engine"
    profile = BatchProfile(min(batches), max(batches), max(batches))
    log(f"building TensorRT engine {out} (batch {profile.min}..{profile.max}{', fp16' if fp16 else ''})")
    build_engine(onnx_path, out, EngineConfig(profile, fp16=fp16, timing_cache=work / "timing.cache"), log=log)
    model.engine = out
    return out


def _artifact(model: BenchModel, runtime: str, shape: tuple[int, int, int], batches: Sequence[int], work: Path,
              exporter: str, fp16: bool, log: Log) -> Path:
    if runtime.startswith("torch"):
        if model.folder is None:
            raise RuntimeUnavailableError("the torch runtime needs a subnetwork folder (spec.json + weights), not "
                                          "an exported file")
        return model.folder
    if runtime.startswith("ort-"):
        return _prepare_onnx(model, shape, work, exporter, log)
    return _prepare_engine(model, shape, batches, work, exporter, fp16, log)


def _runner_kwargs(runtime: str, model: BenchModel, threads: int, spin: bool, fp16: bool, batches: Sequence[int],
                   shape: tuple[int, int, int], work: Path) -> dict[str, Any]:
    kw: dict[str, Any] = {"threads": threads, "spin": spin, "normalize": model.normalize}
    if runtime == "ort-trt":
        dims = "x".join(map(str, shape))
        kw["trt_options"] = {
            "trt_fp16_enable": fp16, "trt_engine_cache_path": str(work / "ort-trt-cache"),
            "trt_timing_cache_path": str(work / "ort-trt-cache"),
            "trt_profile_min_shapes": f"input:{min(batches)}x{dims}",
            "trt_profile_opt_shapes": f"input:{max(batches)}x{dims}",
            "trt_profile_max_shapes": f"input:{max(batches)}x{dims}",
        }
    return kw


def _timed_run(runner: Runner, x: np.ndarray) -> tuple[float | None, str | None]:
    """Seconds of one ``runner.run(x)``, or ``(None, error text)`` when it raised."""
    t0 = time.perf_counter()
    try:
        runner.run(x)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    return time.perf_counter() - t0, None


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def _versions(runtimes: Sequence[str]) -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import onnxruntime  # lazy: an ONNX Runtime GPU build may stand in for the CPU one, or be missing

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if "torch" in sys.modules or any(r.startswith("torch") for r in runtimes):
        import torch  # lazy: only when a torch runtime is benchmarked

        out["torch"] = torch.__version__
    if "tensorrt" in sys.modules:
        out["tensorrt"] = str(sys.modules["tensorrt"].__version__)
    return out


def _input_shape(bms: list[BenchModel], input_shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """The one input size every model is benchmarked at: ``input_shape``, or the models' own."""
    shapes = {m.input_shape for m in bms if m.input_shape is not None and (m.onnx or m.engine)}
    if input_shape is None:
        fixed = shapes or {m.input_shape for m in bms if m.input_shape is not None}
        if len(fixed) != 1:
            raise ExportError(f"the models take different input sizes {sorted(fixed)}; pass --input CxHxW")
        input_shape = next(iter(fixed))
    for s in shapes:
        if s != input_shape:
            raise ExportError(f"an exported model takes {'x'.join(map(str, s))} but --input is "
                              f"{'x'.join(map(str, input_shape))}: re-export it at that size")
    c, h, w = input_shape  # a tuple, also where a list was given
    return (c, h, w)


def _open_runners(bms: list[BenchModel], runtimes: Sequence[str], shape: tuple[int, int, int],
                  batches: Sequence[int], work: Path, *, threads: int, spin: bool, fp16: bool, exporter: str,
                  log: Log) -> tuple[list[Opened], list[dict[str, str]]]:
    """A runner per (runtime, model) that can run here, and the skipped pairs with the reason."""
    skipped: list[dict[str, str]] = []
    runners: list[Opened] = []
    for rt in runtimes:
        ok, why = runtime_available(rt)
        if not ok:
            skipped += [{"model": m.label, "runtime": rt, "reason": why} for m in bms]
            log(f"skipping {rt}: {why}")
            continue
        for m in bms:
            try:
                path = _artifact(m, rt, shape, batches, work, exporter, fp16, log)
                runner = make_runner(rt, path, strict=True,
                                     **_runner_kwargs(rt, m, threads, spin, fp16, batches, shape, work))
            except Exception as exc:  # unavailable or broken: reported, not fatal
                reason = str(exc) if isinstance(exc, PruneoptError) else f"{type(exc).__name__}: {exc}"
                skipped.append({"model": m.label, "runtime": rt, "reason": " ".join(reason.split())[:300]})
                log(f"skipping {m.label} on {rt}: {reason}")
                continue
            runners.append((m, rt, runner, path))
    return runners, skipped


def _time_batch(runners: list[Opened], x: np.ndarray, warmup: int, iters: int, seconds: float | None,
                log: Log) -> list[Cell]:
    """Interleaved rounds of every runner on the batch ``x`` (see the module docstring); one cell per runner."""
    b = len(x)
    cells = [Cell(m.label, rt, b, providers=list(r.providers)) for m, rt, r, _ in runners]
    alive = list(range(len(runners)))

    def call(i: int) -> float | None:
        dt, err = _timed_run(runners[i][2], x)
        if err is not None:  # a runtime failing at one batch size must not end the benchmark
            cells[i].error = err
        return dt

    for _ in range(warmup):
        for i in list(alive):
            if call(i) is None:
                alive.remove(i)
    t0, rounds = time.perf_counter(), 0
    while alive:
        order = alive[rounds % len(alive):] + alive[:rounds % len(alive)]
        for i in order:
            dt = call(i)
            if dt is None:
                alive.remove(i)
            else:
                cells[i].times_s.append(dt)
        rounds += 1
        if seconds is None:
            if rounds >= iters:
                break
        elif rounds >= 3 and time.perf_counter() - t0 >= seconds * max(1, len(alive)):
            break
    log(f"batch {b}: {rounds} rounds of {len(runners)} runner(s) in {time.perf_counter() - t0:.1f} s")
    return cells


def _probe_all(runners: list[Opened], cells: list[Cell], shape: tuple[int, int, int], batches: Sequence[int],
               work: Path, *, threads: int, spin: bool, fp16: bool, log: Log) -> None:
    """Fill in every cell's peak memory, one fresh process per (model, runtime)."""
    for m, rt, _runner, path in runners:
        try:
            mem = probe_memory(rt, path, shape, batches, threads=threads, spin=spin, normalize=m.normalize,
                               trt_options=_runner_kwargs(rt, m, threads, spin, fp16, batches, shape,
                                                          work).get("trt_options"))
        except Exception as exc:
            log(f"memory probe of {m.label} on {rt} failed: {exc}")
            continue
        for c in cells:
            if c.model == m.label and c.runtime == rt and c.batch in mem:
                c.peak_rss_mb = mem[c.batch]["peak_rss_mb"]
                c.gpu_mem_mb = mem[c.batch]["gpu_mem_mb"]


def _compare(cells: list[Cell], bms: list[BenchModel], macs: dict[str, int | None]) -> None:
    """Speedups and FLOPs ratios against the first model, and throughput against torch, per runtime and batch."""
    first = bms[0].label
    for c in cells:
        base = next((d for d in cells if (d.model, d.runtime, d.batch) == (first, c.runtime, c.batch)), None)
        if len(bms) > 1 and base is not None and base.median_ms and c.median_ms:
            c.speedup_vs_first = base.median_ms / c.median_ms
            if macs.get(first) and macs.get(c.model):
                c.flops_ratio_vs_first = macs[first] / macs[c.model]  # type: ignore[operator]
        torch_cell = next((d for d in cells if d.model == c.model and d.batch == c.batch
                           and d.runtime.startswith("torch")), None)
        if torch_cell is not None and torch_cell.throughput and c.throughput:
            c.throughput_vs_torch = c.throughput / torch_cell.throughput


def run_bench(models: Sequence[str | Path | BenchModel], runtimes: Sequence[str], batches: Sequence[int], *,
              input_shape: tuple[int, int, int] | None = None, warmup: int = 3, iters: int = 20,
              seconds: float | None = None, threads: int | None = None, spin: bool = False, memory: bool = True,
              exporter: str = "auto", fp16: bool = False, work_dir: str | Path | None = None,
              log: Log | None = None, seed: int = 0) -> BenchResult:
    """Benchmark every model on every runtime at every batch size; see the module docstring.

    torch's intra-op threads are ``threads`` for the whole benchmark and restored afterwards. ``log`` gets the
    progress lines (default: this module's logger, at INFO)."""
    log = log or logger.info
    if not models:
        raise ExportError("give at least one model to benchmark")
    if warmup < 0 or iters < 1 or (seconds is not None and seconds <= 0):
        raise ExportError("--warmup must be >= 0, --iters >= 1 and --seconds > 0")
    batches = sorted(set(int(b) for b in batches))
    if not batches or batches[0] < 1:
        raise ExportError("batch sizes must be positive")
    threads = int(threads or os.cpu_count() or 1)
    runtimes = list(dict.fromkeys(resolve_kind(r) for r in runtimes))
    bms = [m if isinstance(m, BenchModel) else describe_model(m) for m in models]
    _unique_labels(bms)
    shape = _input_shape(bms, input_shape)
    uses_torch = any(r.startswith("torch") for r in runtimes)
    if uses_torch and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and not spin:
        log("warning: OMP_WAIT_POLICY is not PASSIVE: torch's OpenMP threads spin-wait between parallel regions, "
            "which interleaved with another runtime on a busy machine can slow torch down many times; start the "
            "process with OMP_WAIT_POLICY=PASSIVE (pruneopt bench does so itself)")
    own_work = work_dir is None
    work = Path(work_dir or tempfile.mkdtemp(prefix="pruneopt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    with torch_threads(threads if uses_torch else None):
        runners, skipped = _open_runners(bms, runtimes, shape, batches, work, threads=threads, spin=spin, fp16=fp16,
                                         exporter=exporter, log=log)
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        cells: list[Cell] = []
        t_start = time.perf_counter()
        for b in batches:
            x = realistic_inputs(b, shape, *default_mean_std(shape[0]), seed=seed + b)
            cells += _time_batch(runners, x, warmup, iters, seconds, log)
        bench_seconds = time.perf_counter() - t_start
        load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        for _, _, runner, _ in runners:
            runner.close()  # free host and device memory before the probes
    if memory:
        _probe_all(runners, cells, shape, batches, work, threads=threads, spin=spin, fp16=fp16, log=log)
    macs = {m.label: _macs(m, shape) for m in bms}
    _compare(cells, bms, macs)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "ort_spin": spin,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "input_shape": list(shape),
        "batches": batches,
        "warmup": warmup,
        "iters": iters if seconds is None else None,
        "seconds": seconds,
        "interleaved": True,
        "fp16": fp16,
        "memory": memory,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "bench_seconds": bench_seconds,
        "versions": _versions(runtimes),
        "work_dir": None if own_work else str(work),
        "macs": macs,
    }
    if own_work:
        shutil.rmtree(work, ignore_errors=True)
    return BenchResult(meta, bms, cells, skipped)
