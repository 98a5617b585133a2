"""Peak memory of one runtime on one model, measured in a fresh Python process (``pruneopt bench --memory``).

The child (:func:`probe_main`) imports the runtime, notes its resident set (and the device memory in use), builds
the runner, runs each batch size twice and reports, per batch size, the growth of its peak resident set
(``VmHWM``) and the device memory it took (cudaMemGetInfo, or torch's reserved memory) as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .runners import make_runner
from .tensorrt import import_cudart

__all__ = ["probe_main", "probe_memory"]


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
        rt = import_cudart()
        err, free, total = rt.cudaMemGetInfo()
        return None if err != rt.cudaError_t.cudaSuccess else int(total - free)
    except Exception:
        return None


def probe_main() -> None:
    """Child-process entry: run one (runtime, artefact) at ascending batches, print peak memory as JSON."""
    job = json.loads(sys.stdin.read())
    runtime, shape, batches = job["runtime"], tuple(job["shape"]), sorted(job["batches"])
    if runtime.startswith("torch"):
        import torch  # lazy here and below: the child imports only the runtime it measures, before the baseline

        from . import onnx as _onnx  # noqa: F401  (the torch runner's imports are not the model's memory)

        if runtime == "torch-cuda":
            torch.cuda.init()
            torch.zeros(1, device="cuda")
    else:
        import onnxruntime  # noqa: F401
    on_gpu = runtime in ("torch-cuda", "ort-cuda", "ort-trt", "trt")
    if on_gpu and runtime != "torch-cuda":
        try:
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
            import torch  # lazy: torch only for the PyTorch runner

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
    proc = subprocess.run([sys.executable, "-c", "from export.memory_probe import probe_main; probe_main()"],
                          input=json.dumps(job), capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed: {tail}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {int(k): v for k, v in data.items()}
