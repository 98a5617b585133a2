#!/usr/bin/env bash
# The one GPU check of the project, meant to finish in < 9 minutes. Part 1, the fused multi-positive contrastive
# loss (cpp_ext), within GPU_CHECK_BUDGET seconds (default 300):
#   1. environment (GPU, torch, nvcc),
#   2. just-in-time build of the operator with its CUDA kernels (fresh cache dir),
#   3. the CUDA tests (tests/cpp_ext/test_cuda.py) and the CPU-emulation tests of the same kernels,
#   4. bench/loss.py --device cuda (ext vs eager vs torch.compile(reference)),
#   5. a summary table: time, speed-up vs eager, peak memory, and the achieved bandwidth as a
#      fraction of reading q and k once at the measured device copy bandwidth.
# Part 2 (export and runtimes) is bench/gpu_export_check.sh; part 3 the classification search on the GPU:
#   6. the Fashion-MNIST tree of PNGs (scripts/write_image_folder.py; a generated colour-class folder where
#      Fashion-MNIST is not installed), candidates/hour on the CPU vs the GPU for the same candidates
#      (bench/search_throughput.py --devices cpu,cuda) and a small quick search with --device cuda end to end.
# Every step has its own time limit, capped so that the whole script stays within
# GPU_CHECK_BUDGET seconds (default 300); a failing step does not stop the others, and the exit
# status is non-zero if any step failed. Logs and JSON go to $OUT (default: ./gpu_check_out).
#
#   bash bench/gpu_check.sh
#   GPU_CHECK_NO_COMPILE=1 bash bench/gpu_check.sh     # skip the torch.compile column (saves ~1-2 min)
#   GPU_CHECK_REPS=5 GPU_CHECK_SCALE=0.5 ...            # fewer reps / smaller memory banks
#   GPU_CHECK_ALLOW_CPU=1 ...                           # dry run of this script on a machine without GPU
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-$(command -v python3 || command -v python)}"  # the GPU image has python3 only
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PRUNEOPT_CPP_EXT_CACHE="${PRUNEOPT_CPP_EXT_CACHE:-$(mktemp -d)/pruneopt_cpp_ext}"
export PRUNEOPT_CPP_EXT_VERBOSE=1
REPS="${GPU_CHECK_REPS:-10}"
SCALE="${GPU_CHECK_SCALE:-1.0}"
BUDGET="${GPU_CHECK_BUDGET:-300}"
START=$(date +%s)
failures=()
cd "$ROOT" || exit 1

# seconds left of the overall budget
remaining() { echo $((BUDGET - ($(date +%s) - START))); }

# run_step NAME LIMIT CMD...
source "$ROOT/bench/gpu_steps.sh"

echo "=== environment"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} 2>&1 | tee "$OUT_DIR/environment.log" | sed 's/^/    /'

DEVICE=cuda
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  if [ "${GPU_CHECK_ALLOW_CPU:-0}" = "1" ]; then
    echo "    no CUDA device: dry run on the CPU (GPU_CHECK_ALLOW_CPU=1)"
    DEVICE=cpu
    REPS="${GPU_CHECK_REPS:-2}"
    SCALE="${GPU_CHECK_SCALE:-0.02}"
  else
    echo "    no CUDA device visible to torch; nothing to check (set GPU_CHECK_ALLOW_CPU=1 for a dry run)"
    exit 2
  fi
fi

run_step build 240 "$PY" -c "
import time, cpp_ext
t = time.time()
name = cpp_ext.backend()
print('backend', name, '| has_cuda_kernel', cpp_ext.has_cuda_kernel(), '| reason', cpp_ext.backend_reason())
print('build/load time %.1f s' % (time.time() - t))
assert name != 'reference', 'the compiled operator is not available'
assert '$DEVICE' == 'cpu' or cpp_ext.has_cuda_kernel(), 'the library has no CUDA kernels'
"
grep -E "^backend|build/load" "$OUT_DIR/build.log" | sed 's/^/    /'

run_step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/cpp_ext/test_cuda.py tests/cpp_ext/test_cuda_emulation.py \
  -o addopts="" --junitxml="$OUT_DIR/tests.xml"
tail -n 3 "$OUT_DIR/tests.log" | sed 's/^/    /'

bench_args=(--device "$DEVICE" --reps "$REPS" --scale "$SCALE" --json "$OUT_DIR/loss_bench.json")
# torch.compile of the reference costs ~20-40 s per shape; drop it when time is short
if [ "${GPU_CHECK_NO_COMPILE:-0}" = "1" ] || [ "$(remaining)" -lt 200 ]; then
  bench_args+=(--no-compile)
fi
[ "$DEVICE" = "cpu" ] && bench_args+=(--bandwidth)
run_step bench 280 "$PY" bench/loss.py "${bench_args[@]}"

echo "=== summary"
if [ -f "$OUT_DIR/loss_bench.json" ]; then
  "$PY" - "$OUT_DIR/loss_bench.json" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, sys
data = json.load(open(sys.argv[1]))
meta = data["meta"]
bw = meta.get("bandwidth_bytes_per_s")
print(f"device: {meta['device_name']}  torch {meta['torch']}  ext backend: {meta['ext_backend']}  "
      f"dtype {meta['dtype']}  reps {meta['reps']}  copy bandwidth: {bw / 1e9:.0f} GB/s" if bw else "")
head = f"{'shape':<9} {'B':>5} {'M':>7} {'D':>5} {'method':<9} {'time ms':>9} {'x eager':>8} {'peak MB':>9} {'bw frac':>8}"
print(head)
print("-" * len(head))
for r in data["results"]:
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    t = None if r["median_s"] is None else r["median_s"] * 1e3
    mem = None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20
    line = (f"{r['shape']:<9} {r['B']:>5} {r['M']:>7} {r['D']:>5} {r['method']:<9} {f(t, '.3f'):>9} "
            f"{f(r['speedup_vs_eager'], '.2f'):>8} {f(mem, '.1f'):>9} {f(r['bw_frac'], '.3f'):>8}")
    if r.get("error"):
        line += "  ERROR " + r["error"]
    print(line)
print("bw frac = (bytes of q + bytes of k) / time / measured copy bandwidth")
EOF
else
  echo "    no benchmark results (see $OUT_DIR/bench.log)"
fi

# Part 2: export -- TensorRT smoke test (where installed) and the runtime benchmark (torch, ORT CUDA/TensorRT EP,
# native TensorRT) of resnet50 vs a half-FLOPs subnetwork; see bench/gpu_export_check.sh. GPU_CHECK_NO_EXPORT=1
# skips it.
if [ "${GPU_CHECK_NO_EXPORT:-0}" != "1" ]; then
  echo "=== part 2: export and runtimes (bench/gpu_export_check.sh)"
  OUT="$OUT_DIR/export" timeout --kill-after=10 "${GPU_EXPORT_LIMIT:-240}" bash "$ROOT/bench/gpu_export_check.sh" \
    || failures+=("export")
fi

# Part 3: the classification search on the GPU (image decoding in loader processes, bf16/fp16 autocast,
# channels-last); GPU_CHECK_NO_SEARCH=1 skips it; GPU_SEARCH_LIMIT (default 300) seconds in all.
if [ "${GPU_CHECK_NO_SEARCH:-0}" != "1" ]; then
  echo "=== part 3: classification search on $DEVICE"
  SEARCH_START=$(date +%s)
  search_left() { echo $((${GPU_SEARCH_LIMIT:-300} - ($(date +%s) - SEARCH_START))); }
  TREE="$OUT_DIR/fmnist-tree"
  if ! timeout 120 "$PY" scripts/write_image_folder.py --data fashion-mnist --out "$TREE" --limit 12000 \
      >"$OUT_DIR/tree.log" 2>&1; then
    echo "    Fashion-MNIST is not installed here: a generated 4-class colour folder instead"
    TREE="$OUT_DIR/colour-tree"
    "$PY" -c "import sys; from pathlib import Path  # python -c: the current folder (the checkout) is on the path
from tests.pruneopt.imagedata import make_image_folder
make_image_folder(Path(sys.argv[1]), classes=4, per_class=600, held_out=100, size=(28, 28)); print(sys.argv[1])" \
      "$TREE" >>"$OUT_DIR/tree.log" 2>&1
  fi
  tail -n 1 "$OUT_DIR/tree.log" | sed 's/^/    /'
  timeout --kill-after=10 "$(( $(search_left) / 2 ))" "$PY" bench/search_throughput.py --data "$TREE" \
    --devices "cpu,$DEVICE" --runners in-process -n 4 --json "$OUT_DIR/search_throughput.json" \
    >"$OUT_DIR/search_throughput.log" 2>&1 || failures+=("search_throughput")
  grep -E "candidates/hour" "$OUT_DIR/search_throughput.log" | sed 's/^/    /'
  timeout --kill-after=10 "$(( $(search_left) - 10 ))" "$PY" -m pruneopt search --quick --data "$TREE" \
    --samples 8 --refined-samples 8 --device "$DEVICE" --no-progress --force --out "$OUT_DIR/search_$DEVICE" \
    >"$OUT_DIR/search.log" 2>&1 || failures+=("search")
  tail -n 6 "$OUT_DIR/search.log" | sed 's/^/    /'
  "$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); p = s['parent']['input'];
print(f\"search on {p['device']}: {s['candidates'].get('done', 0)} candidates, median {s['candidate_seconds_median']:.1f} s each \"
      f\"({s['candidates_per_hour_per_worker']:.0f}/hour/worker), input {p['channels']}x{p['size'][0]}x{p['size'][1]}\")" \
    "$OUT_DIR/search_$DEVICE/summary.json" 2>/dev/null | tee -a "$OUT_DIR/summary.txt" | sed 's/^/    /'
fi

if [ "${#failures[@]}" -gt 0 ]; then
  echo "=== FAILED steps: ${failures[*]} (logs in $OUT_DIR)"
  exit 1
fi
echo "=== all steps passed (logs in $OUT_DIR)"
