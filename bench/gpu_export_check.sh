#!/usr/bin/env bash
# GPU check of export/ (ONNX, TensorRT, runtimes), meant to finish in < 4 minutes; part 2 of bench/gpu_check.sh.
# Needs torch (CUDA build) and onnxruntime-gpu; TensorRT + cuda-python when present.
#   1. environment: GPU, torch, ONNX Runtime providers, TensorRT, cuda-python;
#   2. trt_smoke (only with TensorRT): export resnet20 (3x32x32), build FP32 and FP16 engines with
#      `pruneopt export --trt`, run them through TrtRunner with the cuda-python and torch buffer backends and
#      compare with ONNX Runtime CPU at batch 1, 7 and 64 (the code the CPU-only tests can only fake);
#   3. bench: bench/export_bench.py -- resnet50 and a half-FLOPs subnetwork at 3x256x128, exported once, then
#      `pruneopt bench` machinery with torch, ort-cuda, ort-trt, trt (those that are available; the others are
#      listed as skipped with the reason), batch 1, 8, 32, interleaved; prints the markdown table.
# Every step has its own time limit and a failing step does not stop the others; the exit status is non-zero if
# any step failed. Logs, JSON and the plot go to $OUT (default: ./gpu_export_check_out).
#
#   bash bench/gpu_export_check.sh
#   GPU_EXPORT_FP16=1 bash bench/gpu_export_check.sh      # FP16 for ort-trt and trt in the benchmark
#   GPU_EXPORT_NO_MEMORY=1 ...                            # skip the per-runtime memory probes (~40 s)
#   GPU_EXPORT_ARCH=resnet18 GPU_EXPORT_BATCH=1,2 ...     # another parent / batch sizes (default resnet50, 1,8,32)
#   GPU_CHECK_ALLOW_CPU=1 ...                             # dry run on a machine without GPU (torch-cpu, ort-cpu)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-$ROOT/gpu_export_check_out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-$(command -v python3 || command -v python)}"  # the GPU image has python3 only
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
failures=()
cd "$ROOT" || exit 1

# run_step NAME LIMIT CMD...
source "$ROOT/bench/gpu_steps.sh"

echo "=== environment"
"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/environment.log" | sed 's/^/    /'
import subprocess
try:
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip())
except Exception as exc:
    print("nvidia-smi:", exc)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
try:
    import tensorrt
    print("tensorrt", tensorrt.__version__)
except ImportError as exc:
    print("tensorrt: not installed", exc)
from export.tensorrt import device_facts, tensorrt_available
print("cuda-python device:", device_facts(), "| native trt runtime:", tensorrt_available())
EOF

RUNTIMES="torch,ort-cuda,ort-trt,trt"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  if [ "${GPU_CHECK_ALLOW_CPU:-0}" = "1" ]; then
    echo "    no CUDA device: dry run on the CPU (GPU_CHECK_ALLOW_CPU=1)"
    RUNTIMES="torch,ort-cpu,ort-cuda,trt"
  else
    echo "    no CUDA device visible to torch; nothing to check (set GPU_CHECK_ALLOW_CPU=1 for a dry run)"
    exit 2
  fi
fi

if "$PY" -c "import tensorrt" 2>/dev/null; then
  run_step trt_smoke 90 "$PY" - "$OUT_DIR/trt_smoke" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from export.inputs import random_inputs
from export.runners import make_runner
from export.tensorrt import TrtRunner
from pruneopt.cli import main as cli

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
onnx_path = out / "r20.onnx"
for extra in ([], ["--fp16"]):
    args = ["export", "--arch", "resnet20", "--input", "3x32x32", "--out", str(onnx_path), "--exporter", "legacy",
            "--trt", *extra, "--trt-max-batch", "64", "--timing-cache", str(out / "timing.cache")]
    if extra:
        args = ["export", str(onnx_path), "--trt", "--fp16", "--trt-max-batch", "64",
                "--timing-cache", str(out / "timing.cache")]
    try:
        cli(args)
    except SystemExit as exc:
        assert exc.code in (0, None), f"pruneopt {' '.join(args)} exited {exc.code}"
ref = make_runner("ort-cpu", onnx_path)
worst = {}
for engine, tol in ((out / "r20.engine", 1e-2), (out / "r20-fp16.engine", 5e-2)):
    for backend in ("cuda-python", "torch"):
        try:
            runner = TrtRunner(engine, backend=backend)
        except Exception as exc:
            print(f"{engine.name} / {backend}: cannot run ({exc})")
            continue
        for b in (1, 7, 64):
            x = random_inputs(b, (3, 32, 32), seed=b)
            want, got = ref.run(x), runner.run(x)
            rel = float(np.abs(got - want).max() / np.abs(want).max())
            worst[(engine.name, backend)] = max(rel, worst.get((engine.name, backend), 0.0))
            print(f"{engine.name:16s} {backend:12s} batch {b:3d}: rel err vs ONNX Runtime CPU {rel:.2e} "
                  f"({runner.providers[0]})")
            assert got.shape == want.shape and rel < tol, f"{engine.name}/{backend} batch {b}: {rel:.2e} >= {tol}"
        runner.close()
assert worst, "no TensorRT runner could run"
print("trt smoke ok:", {f"{k[0]}/{k[1]}": f"{v:.1e}" for k, v in worst.items()})
EOF
  grep -E "rel err|smoke ok|cannot run" "$OUT_DIR/trt_smoke.log" | sed 's/^/    /'
else
  echo "=== trt_smoke: skipped (tensorrt is not installed: pip install pruneopt[trt])"
fi

bench_args=(--arch "${GPU_EXPORT_ARCH:-resnet50}" --runtimes "$RUNTIMES" --batch "${GPU_EXPORT_BATCH:-1,8,32}"
            --iters 10 --warmup 3 --exporter legacy --out "$OUT_DIR/bench")
[ "${GPU_EXPORT_FP16:-0}" = "1" ] && bench_args+=(--fp16)
[ "${GPU_EXPORT_NO_MEMORY:-0}" = "1" ] && bench_args+=(--no-memory)
run_step bench 200 "$PY" bench/export_bench.py "${bench_args[@]}"
echo "=== results"
sed -n '/ vs half-FLOPs subnetwork/,$p' "$OUT_DIR/bench.log" | grep -v '^->' | tee "$OUT_DIR/summary.md"

if [ "${#failures[@]}" -gt 0 ]; then
  echo "=== FAILED steps: ${failures[*]} (logs in $OUT_DIR)"
  exit 1
fi
echo "=== all steps passed (logs in $OUT_DIR)"
