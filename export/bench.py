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

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError, OnnxFileError, PruneoptError, RuntimeUnavailableError
from .inputs import realistic_inputs
from .metadata import default_mean_std, read_metadata
from .runners import Runner, make_runner, resolve_kind, runtime_available

Log = Callable[[str], None]


@dataclass
class BenchModel:
    """A model under test and the artefacts each runtime needs."""

    label: str
    folder: Path | None = None  # subnetwork folder (torch runtimes)
    onnx: Path | None = None
    engine: Path | None = None
    input_shape: tuple[int, int, int] | None = None
    macs: int | None = None
    arch: str | None = None
    spec_hash: str | None = None
    normalize: bool = False


@dataclass
class Cell:
    """The measurement of one (model, runtime, batch)."""

    model: str
    runtime: str
    batch: int
    times_s: list[float] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None
    gpu_mem_mb: float | None = None
    error: str | None = None
    speedup_vs_first: float | None = None
    flops_ratio_vs_first: float | None = None
    throughput_vs_torch: float | None = None

    def _q(self, q: float) -> float | None:
        if not self.times_s:
            return None
        return float(np.quantile(np.asarray(self.times_s), q))

    @property
    def median_ms(self) -> float | None:
        return None if not self.times_s else statistics.median(self.times_s) * 1e3

    @property
    def p90_ms(self) -> float | None:
        v = self._q(0.9)
        return None if v is None else v * 1e3

    @property
    def p99_ms(self) -> float | None:
        v = self._q(0.99)
        return None if v is None else v * 1e3

    @property
    def throughput(self) -> float | None:
        m = self.median_ms
        return None if not m else self.batch / (m / 1e3)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(median_ms=self.median_ms, p90_ms=self.p90_ms, p99_ms=self.p99_ms, throughput=self.throughput,
                 iters=len(self.times_s))
        return d


@dataclass
class BenchResult:
    meta: dict[str, Any]
    models: list[BenchModel]
    cells: list[Cell]
    skipped: list[dict[str, str]]

    def cell(self, model: str, runtime: str, batch: int) -> Cell | None:
        return next((c for c in self.cells if (c.model, c.runtime, c.batch) == (model, runtime, batch)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "models": [{k: str(v) if isinstance(v, Path) else v for k, v in asdict(m).items()} for m in self.models],
            "results": [c.to_dict() for c in self.cells],
            "skipped": self.skipped,
        }

    def markdown(self) -> str:
        """The results as a markdown table, followed by the skipped runtimes."""
        multi = len(self.models) > 1
        has_torch = any(c.throughput_vs_torch is not None for c in self.cells)
        head = ["model", "runtime", "batch", "median ms", "p90 ms", "p99 ms", "img/s", "peak MB"]
        if has_torch:
            head.append("x torch (img/s)")
        if multi:
            head += [f"speedup vs {self.models[0].label}", "FLOPs ratio"]
        rows = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]

        def f(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        for c in self.cells:
            mem = c.gpu_mem_mb if c.gpu_mem_mb is not None else c.peak_rss_mb
            row = [c.model, c.runtime, str(c.batch), f(c.median_ms, ".2f"), f(c.p90_ms, ".2f"), f(c.p99_ms, ".2f"),
                   f(c.throughput, ".1f"), f(mem, ".0f")]
            if c.error:
                row[3] = f"error: {c.error}"
            if has_torch:
                row.append(f(c.throughput_vs_torch, ".2f"))
            if multi:
                row += [f(c.speedup_vs_first, ".2f"), f(c.flops_ratio_vs_first, ".2f")]
            rows.append("| " + " | ".join(row) + " |")
        if self.skipped:
            rows.append("")
        for s in self.skipped:
            rows.append(f"skipped: {s['model']} on {s['runtime']}: {s['reason']}")
        return "\n".join(rows)

    def plot(self, path: str | Path) -> Path:
        """Throughput and median latency against batch size, one line per (model, runtime)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        keys = sorted({(c.model, c.runtime) for c in self.cells if c.times_s},
                      key=lambda k: ([m.label for m in self.models].index(k[0]), k[1]))
        for model, runtime in keys:
            cs = sorted((c for c in self.cells if (c.model, c.runtime) == (model, runtime) and c.times_s),
                        key=lambda c: c.batch)
            b = [c.batch for c in cs]
            ax1.plot(b, [c.throughput for c in cs], marker="o", label=f"{model} / {runtime}")
            ax2.plot(b, [c.median_ms for c in cs], marker="o", label=f"{model} / {runtime}")
        for ax, title, ylab in ((ax1, "throughput", "images / s"), (ax2, "median latency", "ms per batch")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylab)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
        ax1.set_yscale("log")
        ax2.set_yscale("log")
        ax1.legend(fontsize=7)
        shape = self.meta.get("input_shape")
        fig.suptitle(f"pruneopt bench: input {'x'.join(map(str, shape)) if shape else '?'}, "
                     f"{self.meta.get('threads')} threads, {self.meta.get('machine', '')}", fontsize=9)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


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
        from .tensorrt import read_sidecar

        side = read_sidecar(p)
        macs = side.get("metadata", {}).get("pruneopt.macs")
        return BenchModel(label or p.stem, engine=p, input_shape=tuple(side["input_shape"]),  # type: ignore[arg-type]
                          macs=int(macs) if macs else None, arch=side.get("metadata", {}).get("pruneopt.arch"))
    if p.is_file() and p.suffix == ".json":
        p = p.parent
    if not (p / "spec.json").is_file():
        raise ExportError(f"{p} is not a model: give a subnetwork folder (spec.json + weights.safetensors), an .onnx "
                          "exported by `pruneopt export`, or a TensorRT .engine")
    from pruneopt.models import ModelSpec, get_arch

    spec = ModelSpec.load(p)
    shape = (spec.in_chans, *get_arch(spec.arch).default_input[1:])
    name = label or (p.name if p.name not in ("", ".") else spec.arch)
    return BenchModel(name, folder=p, input_shape=shape, arch=spec.arch, spec_hash=spec.hash())  # type: ignore[arg-type]


def _macs(model: BenchModel, shape: tuple[int, int, int]) -> int | None:
    if model.folder is not None:
        from pruneopt.complexity import count
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
    from .onnx import export_onnx, load_model

    out = work / f"{model.label}-{'x'.join(map(str, shape))}.onnx"
    log(f"exporting {model.label} to {out} ({exporter} exporter, verified at batch 1)")
    export_onnx(load_model(model.folder), out, shape, exporter=exporter, normalize=model.normalize, batches=(1,))
    model.onnx = out
    return out


def _prepare_engine(model: BenchModel, shape: tuple[int, int, int], batches: Sequence[int], work: Path,
                    exporter: str, fp16: bool, log: Log) -> Path:
    if model.engine is not None:
        return model.engine
    from .tensorrt import BatchProfile, EngineConfig, build_engine

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


# -- memory probe (runs in a child process) -----------------------------------------------------------------------
def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _gpu_used_bytes() -> int | None:
    try:
        from .tensorrt import import_cudart

        rt = import_cudart()
        err, free, total = rt.cudaMemGetInfo()
        return None if err != rt.cudaError_t.cudaSuccess else int(total - free)
    except Exception:
        return None


def _probe_main() -> None:
    """Child-process entry: run one (runtime, artefact) at ascending batches, print peak memory as JSON."""
    job = json.loads(sys.stdin.read())
    runtime, shape, batches = job["runtime"], tuple(job["shape"]), sorted(job["batches"])
    if runtime.startswith("torch"):
        import torch

        from . import onnx as _  # noqa: F401  (the torch runner's imports are not the model's memory)

        if runtime == "torch-cuda":
            torch.cuda.init()
            torch.zeros(1, device="cuda")
    else:
        import onnxruntime  # noqa: F401
    on_gpu = runtime in ("torch-cuda", "ort-cuda", "ort-trt", "trt")
    if on_gpu and runtime != "torch-cuda":
        try:
            from .tensorrt import import_cudart

            import_cudart().cudaFree(0)  # create the context before the baseline
        except Exception:
            pass
    base_rss = _status_kb("VmRSS") or 0
    gpu_base = _gpu_used_bytes() if on_gpu else None
    # the parent process checked the file already: parsing it again here would count onnx's copy as ORT's memory
    runner = make_runner(runtime, job["path"], threads=job["threads"], spin=job["spin"], normalize=job["normalize"],
                         trt_options=job.get("trt_options"), verify_integrity=False)
    out = {}
    for b in batches:
        x = np.zeros((b, *shape), np.float32)
        for _ in range(2):
            runner.run(x)
        hwm = _status_kb("VmHWM")
        gpu = None
        if runtime == "torch-cuda":
            import torch

            gpu = torch.cuda.max_memory_reserved() / 2**20
        elif on_gpu:
            used = _gpu_used_bytes()
            gpu = None if used is None or gpu_base is None else (used - gpu_base) / 2**20
        out[str(b)] = {"peak_rss_mb": None if hwm is None else (hwm - base_rss) / 1024, "gpu_mem_mb": gpu}
    runner.close()
    sys.stdout.write("\n" + json.dumps(out) + "\n")


def probe_memory(runtime: str, path: Path, shape: tuple[int, int, int], batches: Sequence[int], *, threads: int,
                 spin: bool, normalize: bool, trt_options: dict[str, Any] | None = None,
                 timeout: float = 900) -> dict[int, dict[str, float | None]]:
    """Peak memory of ``runtime`` on ``path`` per batch size, measured in a fresh Python process."""
    job = {"runtime": runtime, "path": str(path), "shape": list(shape), "batches": list(batches),
           "threads": threads, "spin": spin, "normalize": normalize, "trt_options": trt_options}
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", "from export.bench import _probe_main; _probe_main()"],
                          input=json.dumps(job), capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed: {tail}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {int(k): v for k, v in data.items()}


# -- the benchmark -------------------------------------------------------------------------------------------------
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
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if "torch" in sys.modules or any(r.startswith("torch") for r in runtimes):
        import torch

        out["torch"] = torch.__version__
    if "tensorrt" in sys.modules:
        out["tensorrt"] = str(sys.modules["tensorrt"].__version__)
    return out


def run_bench(models: Sequence[str | Path | BenchModel], runtimes: Sequence[str], batches: Sequence[int], *,
              input_shape: tuple[int, int, int] | None = None, warmup: int = 3, iters: int = 20,
              seconds: float | None = None, threads: int | None = None, spin: bool = False, memory: bool = True,
              exporter: str = "auto", fp16: bool = False, work_dir: str | Path | None = None,
              log: Log | None = None, seed: int = 0) -> BenchResult:
    """Benchmark every model on every runtime at every batch size; see the module docstring."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
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
    shapes = {m.input_shape for m in bms if m.input_shape is not None and (m.onnx or m.engine)}
    if input_shape is None:
        fixed = shapes or {m.input_shape for m in bms if m.input_shape is not None}
        if len(fixed) != 1:
            raise ExportError(f"the models take different input sizes {sorted(fixed)}; pass --input CxHxW")
        input_shape = next(iter(fixed))  # type: ignore[assignment]
    for s in shapes:
        if s != input_shape:
            raise ExportError(f"an exported model takes {'x'.join(map(str, s))} but --input is "
                              f"{'x'.join(map(str, input_shape))}: re-export it at that size")  # type: ignore[arg-type]
    shape: tuple[int, int, int] = tuple(input_shape)  # type: ignore[arg-type,assignment]
    if any(r.startswith("torch") for r in runtimes):
        import torch

        torch.set_num_threads(threads)
        if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and not spin:
            log("warning: OMP_WAIT_POLICY is not PASSIVE: torch's OpenMP threads spin-wait between parallel regions, "
                "which interleaved with another runtime on a busy machine can slow torch down many times; start the "
                "process with OMP_WAIT_POLICY=PASSIVE (pruneopt bench does so itself)")
    own_work = work_dir is None
    work = Path(work_dir or tempfile.mkdtemp(prefix="pruneopt-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    skipped: list[dict[str, str]] = []
    runners: list[tuple[BenchModel, str, Runner, Path]] = []
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
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cells: list[Cell] = []
    t_start = time.perf_counter()
    for b in batches:
        x = realistic_inputs(b, shape, *default_mean_std(shape[0]), seed=seed + b)
        batch_cells = [Cell(m.label, rt, b, providers=list(r.providers)) for m, rt, r, _ in runners]
        alive = list(range(len(runners)))

        def call(i: int, x: np.ndarray = x, cells_b: list[Cell] = batch_cells) -> float | None:
            dt, err = _timed_run(runners[i][2], x)
            if err is not None:  # a runtime failing at one batch size must not end the benchmark
                cells_b[i].error = err
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
                    batch_cells[i].times_s.append(dt)
            rounds += 1
            if seconds is None:
                if rounds >= iters:
                    break
            elif rounds >= 3 and time.perf_counter() - t0 >= seconds * max(1, len(alive)):
                break
        log(f"batch {b}: {rounds} rounds of {len(runners)} runner(s) in {time.perf_counter() - t0:.1f} s")
        cells += batch_cells
    bench_seconds = time.perf_counter() - t_start
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    for _, _, runner, _ in runners:
        runner.close()  # free host and device memory before the probes
    if memory:
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

    macs = {m.label: _macs(m, shape) for m in bms}
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
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return BenchResult(meta, bms, cells, skipped)
