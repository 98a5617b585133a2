"""Fused multi-positive contrastive loss vs the eager reference vs torch.compile(reference).

    python bench/loss.py [--device cpu|cuda] [--quick | --scale F --reps N] [--shapes a,b] [--json FILE]

For every shape it times forward+backward of the mean loss (median of --reps runs after --warmup,
the methods interleaved within each rep so that load changes hit all of them alike) and measures
the peak extra memory of one forward+backward, for

* ``ext``:      cpp_ext.multi_positive_loss_mean (the compiled operator; its backend is printed),
* ``eager``:    cpp_ext.multi_positive_loss_reference_mean,
* ``compiled``: torch.compile(reference) (inductor; compilation is excluded from the timings),
* ``gemm_floor`` (reference point, not a loss): only the matrix products any exact method needs,
  S = q @ k.T and S @ k (plus S.T @ q in-batch), with no softmax at all. When D is large these
  GEMMs dominate and bound the possible speed-up over eager; its memory column is not measured.

Default shapes (B, M, D): ``inbatch`` (256, 256, 2048) with k = q and self_index = arange (4
images per identity); ``bank16k`` (512, 16384, 2048) and ``bank100k`` (1024, 100000, 256): an
instance memory bank that does not require grad, ~16 entries per pseudo-label, every query's own
entry somewhere in the bank (self_index). ``--scale F`` multiplies M (and B for in-batch) by F.

Peak memory: on CUDA, torch.cuda.max_memory_allocated() above the allocation level at the start.
On CPU (Linux), the process's peak resident set above its level at the start: free heap is first
returned to the OS (malloc_trim) and the kernel's high-water mark is reset (/proc/self/clear_refs
"5"), then VmHWM - VmRSS(start) is read after the run. PyTorch's CPU allocator does not cache,
so this counts every tensor (and workspace) that was alive at the peak, whichever op made it;
tracemalloc cannot see these allocations and the profiler's per-op numbers are not a peak.

With --bandwidth (default on CUDA) the device's copy bandwidth is measured and the ``bw_frac``
column gives (bytes of q + bytes of k) / time / bandwidth: the fraction of the device bandwidth
that reading q and k exactly once in that time would represent.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import cpp_ext

SHAPES: dict[str, tuple[int, int, int, bool]] = {
    "inbatch": (256, 256, 2048, True),
    "bank16k": (512, 16384, 2048, False),
    "bank100k": (1024, 100000, 256, False),
}
METHODS = ("ext", "eager", "compiled", "gemm_floor")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Result:
    shape: str
    B: int
    M: int
    D: int
    in_batch: bool
    method: str
    times_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    peak_mem_bytes: int | None = None
    compile_s: float | None = None
    loss: float | None = None
    speedup_vs_eager: float | None = None
    mem_ratio_vs_eager: float | None = None
    bw_frac: float | None = None
    error: str | None = None


# --- inputs -----------------------------------------------------------------------------------


def make_inputs(B: int, M: int, D: int, in_batch: bool, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    if in_batch:
        per_id = 4
        q = F.normalize(torch.randn(B, D, generator=g), dim=1).to(device=device, dtype=dtype)
        labels = (torch.arange(B) // per_id).to(device)
        return q, None, labels, labels, torch.arange(B, device=device)
    k = F.normalize(torch.randn(M, D, generator=g), dim=1).to(device=device, dtype=dtype)
    k_labels = torch.randint(0, max(1, M // 16), (M,), generator=g)
    self_index = torch.randperm(M, generator=g)[:B] if B <= M else torch.randint(0, M, (B,), generator=g)
    q = F.normalize(k[self_index.to(device)].float() + 0.3 * torch.randn(B, D, generator=g).to(device), dim=1)
    return (
        q.to(dtype).contiguous(),
        k,
        k_labels[self_index].to(device),
        k_labels.to(device),
        self_index.to(device),
    )


# --- measurement ------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _proc_status(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def peak_memory(device: str, fn: Callable[[], object]) -> int | None:
    """Peak extra memory of ``fn()`` in bytes (see the module docstring); None if unmeasurable."""
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    if not sys.platform.startswith("linux"):
        fn()
        return None
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        fn()
        return None
    start = _proc_status("VmRSS:")
    fn()
    return _proc_status("VmHWM:") - start


def device_bandwidth(device: str, nbytes: int = 512 * 2**20, reps: int = 5) -> float:
    """Copy bandwidth in bytes/s (read + write counted), best of ``reps``."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t = time.perf_counter()
        y.copy_(x)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


# --- benchmark ----------------------------------------------------------------------------------


def _gemm_floor(q: torch.Tensor, k: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    """The GEMMs of forward + backward without anything else (a lower bound, not a loss)."""
    with torch.no_grad():
        s = q @ k.T
        out = s @ k
        if k is q:
            out = out + s.T @ q
    return out.sum().requires_grad_()


def build_methods(names: list[str]) -> dict[str, Callable[..., torch.Tensor]]:
    fns: dict[str, Callable[..., torch.Tensor]] = {}
    for name in names:
        if name == "ext":
            fns[name] = cpp_ext.multi_positive_loss_mean
        elif name == "eager":
            fns[name] = cpp_ext.multi_positive_loss_reference_mean
        elif name == "compiled":
            fns[name] = torch.compile(cpp_ext.multi_positive_loss_reference_mean, dynamic=False)
        elif name == "gemm_floor":
            fns[name] = _gemm_floor
        else:
            raise ValueError(f"unknown method {name!r}")
    return fns


def bench_shape(
    name: str,
    B: int,
    M: int,
    D: int,
    in_batch: bool,
    methods: dict[str, Callable[..., torch.Tensor]],
    args: argparse.Namespace,
    bandwidth: float | None,
) -> list[Result]:
    q0, k0, q_labels, k_labels, self_index = make_inputs(B, M, D, in_batch, DTYPES[args.dtype], args.device)
    results = {m: Result(name, B, M, D, in_batch, m) for m in methods}

    def step(method: str) -> float | None:
        q = q0.detach().clone().requires_grad_()
        k = q if in_batch else k0
        loss = methods[method](q, k, q_labels, k_labels, self_index, tau=args.tau, mode=args.mode)
        loss.backward()
        return None if method == "gemm_floor" else float(loss.detach())

    def timed(method: str) -> float:
        sync(args.device)
        t = time.perf_counter()
        step(method)
        sync(args.device)
        return time.perf_counter() - t

    for method, res in results.items():  # warm-up (and compilation for torch.compile)
        try:
            t = time.perf_counter()
            res.loss = step(method)
            sync(args.device)
            if method == "compiled":
                res.compile_s = time.perf_counter() - t
            for _ in range(args.warmup - 1):
                step(method)
        except Exception as exc:  # report it and keep benchmarking the others
            res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    live = [m for m, r in results.items() if r.error is None]
    for _ in range(args.reps):
        for method in live:
            try:
                results[method].times_s.append(timed(method))
            except Exception as exc:
                results[method].error = f"{type(exc).__name__}: {exc}"[:300]
        live = [m for m in live if results[m].error is None]
    for method in live:
        if method == "gemm_floor":
            continue
        try:
            results[method].peak_mem_bytes = peak_memory(args.device, lambda m=method: step(m))
        except Exception as exc:
            results[method].error = f"{type(exc).__name__}: {exc}"[:300]

    eager = results.get("eager")
    qk_bytes = q0.numel() * q0.element_size() + (0 if in_batch else k0.numel() * k0.element_size())
    for res in results.values():
        if res.times_s:
            res.median_s = statistics.median(res.times_s)
            if bandwidth:
                res.bw_frac = qk_bytes / res.median_s / bandwidth
    for res in results.values():
        if eager is not None and eager.median_s and res.median_s:
            res.speedup_vs_eager = eager.median_s / res.median_s
        if eager is not None and eager.peak_mem_bytes and res.peak_mem_bytes is not None:
            res.mem_ratio_vs_eager = res.peak_mem_bytes / eager.peak_mem_bytes
    return list(results.values())


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Result], show_bw: bool) -> None:
    header = f"{'shape':<10} {'B':>5} {'M':>7} {'D':>5}  {'method':<9} {'fwd+bwd s':>10} {'x eager':>8}"
    header += f" {'peak MB':>9} {'mem/eager':>9} {'loss':>9}"
    if show_bw:
        header += f" {'bw_frac':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        mem = None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20
        line = f"{r.shape:<10} {r.B:>5} {r.M:>7} {r.D:>5}  {r.method:<9} {_fmt(r.median_s, '.4f'):>10}"
        line += f" {_fmt(r.speedup_vs_eager, '.2f'):>8} {_fmt(mem, '.1f'):>9} {_fmt(r.mem_ratio_vs_eager, '.3f'):>9}"
        line += f" {_fmt(r.loss, '.5f'):>9}"
        if show_bw:
            line += f" {_fmt(r.bw_frac, '.3f'):>8}"
        if r.error:
            line += f"  ERROR {r.error}"
        print(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {sorted(SHAPES)}")
    ap.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="B,M,D[,inbatch]",
        help="extra custom shape (repeatable); with --shape only custom shapes run unless --shapes is given",
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiply M (and B=M for in-batch) by this")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per method first (>= 1)")
    ap.add_argument("--quick", action="store_true", help="same as --scale 0.125 --reps 2")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS}")
    ap.add_argument("--no-compile", action="store_true", help="drop the torch.compile(reference) column")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--mode", choices=list(cpp_ext.MODES), default="mean_log")
    ap.add_argument("--bandwidth", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--json", type=Path, help="also write all results (and environment) to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.reps = min(args.scale, 0.125), min(args.reps, 2)
    args.warmup = max(1, args.warmup)
    if args.bandwidth is None:
        args.bandwidth = args.device == "cuda"
    return args


def resolve_shapes(args: argparse.Namespace, argv_has_shapes: bool) -> list[tuple[str, int, int, int, bool]]:
    shapes: list[tuple[str, int, int, int, bool]] = []
    if argv_has_shapes or not args.shape:
        for name in filter(None, args.shapes.split(",")):
            if name not in SHAPES:
                raise SystemExit(f"unknown shape {name!r}; choose from {sorted(SHAPES)}")
            B, M, D, in_batch = SHAPES[name]
            M = max(2, round(M * args.scale))
            if in_batch:
                B = M
            shapes.append((name, B, M, D, in_batch))
    for spec in args.shape:
        parts = spec.split(",")
        B, M, D = (int(x) for x in parts[:3])
        in_batch = len(parts) > 3 and parts[3] == "inbatch"
        shapes.append((f"custom{len(shapes)}", B, B if in_batch else M, D, in_batch))
    return shapes


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    raw = sys.argv[1:] if argv is None else argv
    shapes = resolve_shapes(args, any(a.startswith("--shapes") for a in raw))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    names = [m for m in args.methods.split(",") if m and not (args.no_compile and m == "compiled")]
    methods = build_methods(names)
    backend = cpp_ext.backend()
    bandwidth = device_bandwidth(args.device) if args.bandwidth else None
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(
        f"device={args.device} ({device_name}) torch={torch.__version__} threads={torch.get_num_threads()} "
        f"dtype={args.dtype} mode={args.mode} tau={args.tau} reps={args.reps} ext backend={backend}"
        + (f" has_cuda_kernel={cpp_ext.has_cuda_kernel()}" if args.device == "cuda" else "")
    )
    if bandwidth:
        print(f"measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s")
    if load_start:
        print(f"load average at start: {load_start[0]:.2f}")
    rows: list[Result] = []
    for name, B, M, D, in_batch in shapes:
        rows.extend(bench_shape(name, B, M, D, in_batch, methods, args, bandwidth))
    print()
    print_table(rows, show_bw=bandwidth is not None)
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load_end:
        print(f"\nload average at end: {load_end[0]:.2f} (more than the core count means the timings are contended)")
    if args.json:
        meta = dict(
            device=args.device,
            device_name=device_name,
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            dtype=args.dtype,
            mode=args.mode,
            tau=args.tau,
            reps=args.reps,
            scale=args.scale,
            ext_backend=backend,
            bandwidth_bytes_per_s=bandwidth,
            load_average_start=load_start,
            load_average_end=load_end,
            argv=raw,
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(meta=meta, results=[asdict(r) for r in rows]), indent=2))
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
