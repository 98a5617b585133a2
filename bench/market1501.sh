#!/usr/bin/env bash
# Unsupervised TMP re-ID on a real Market-1501 folder, on a GPU machine (the full cluster-contrast-reid-style
# recipe: ResNet-50 from ImageNet weights, 256x128, 50 epochs x 200 iterations, P x K = 16 x 16, DBSCAN on the
# k-reciprocal Jaccard distance with eps 0.6, k1 30, k2 6; Adam 3.5e-4, weight decay 5e-4, lr x0.1 every 20 epochs).
#
#   bash bench/market1501.sh /data/Market-1501-v15.09.15 [RUN_DIR] [GPUS]
#
# Steps (each resumable: rerun the script after an interruption and finished steps are skipped / runs resume):
#   0. environment: CUDA, the FAISS build (pip install "pruneopt[gpu]" gives faiss-gpu-cu12), the loss backend;
#   1. ImageNet ResNet-50 weights converted to a pruneopt backbone folder (needs torchvision and the internet;
#      PRETRAINED=none trains from scratch, PRETRAINED=/path/winner uses e.g. a pruned winner folder);
#   2. "before training" mAP of that backbone (a fresh GeM + BNNeck on top, nothing trained);
#   3. TMP training (all positives in the batch + the cluster-centroid memory);
#   4. the single-positive baseline with the same budget (--loss centroid, cluster-contrast-reid's loss);
#   5. final evaluation of both, without and with k-reciprocal re-ranking, and a summary.
# With GPUS > 1 every step-3/4 run is a torchrun DDP job (NCCL): each GPU trains its own 16 x 16 batches, so the
# effective batch is GPUS x 256 images; set ITERS=$((200 / GPUS)) to keep the number of images per epoch.
# Environment overrides: ARCH (resnet50), EPOCHS (50), ITERS (200), BATCH (16x16), WORKERS (8), SIZE (256x128),
# EPS (0.6), PRETRAINED (imagenet), PYTHON (python).
set -euo pipefail

DATA="${1:?usage: bash bench/market1501.sh /path/to/Market-1501-v15.09.15 [RUN_DIR] [GPUS]}"
RUN="${2:-runs/market1501}"
GPUS="${3:-1}"
ARCH="${ARCH:-resnet50}"
EPOCHS="${EPOCHS:-50}"
ITERS="${ITERS:-200}"
BATCH="${BATCH:-16x16}"
WORKERS="${WORKERS:-8}"
SIZE="${SIZE:-256x128}"
EPS="${EPS:-0.6}"
PRETRAINED="${PRETRAINED:-imagenet}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"  # the GPU image has python3 only
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RUN"

echo "== 0. environment"
"$PY" - <<'EOF'
import faiss, torch, cpp_ext
from reidserve.cluster import faiss_gpu_available
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, GPUs: {torch.cuda.device_count()}")
print(f"FAISS {faiss.__version__}, GPU index: {faiss_gpu_available()}")
print(f"multi-positive loss backend: {cpp_ext.backend()} ({cpp_ext.backend_reason()})")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this recipe is meant for a GPU machine")
EOF
"$PY" -m reidserve.cli eval --help >/dev/null
"$PY" - "$DATA" <<'EOF'
import sys
from reidserve.data import load_dataset
print(load_dataset(sys.argv[1]).summary())
EOF

echo "== 1. backbone"
case "$PRETRAINED" in
  none) BACKBONE=(--arch "$ARCH") ;;
  imagenet)
    if [ ! -f "$RUN/imagenet_$ARCH/weights.safetensors" ]; then
      "$PY" - "$ARCH" "$RUN/imagenet_$ARCH" <<'EOF'
import sys
import torchvision
from pruneopt.checkpoint import save_subnet
from pruneopt.models import build, default_spec
arch, out = sys.argv[1], sys.argv[2]
net = build(default_spec(arch))  # module names match torchvision's
weights = torchvision.models.get_model_weights(arch).DEFAULT
net.load_state_dict(torchvision.models.get_model(arch, weights=weights).state_dict(), strict=True)
save_subnet(net, out)
print(f"{arch} {weights} -> {out}")
EOF
    fi
    BACKBONE=(--backbone "$RUN/imagenet_$ARCH") ;;
  *) BACKBONE=(--backbone "$PRETRAINED") ;;
esac

echo "== 2. before training"
if [ ! -s "$RUN/before.json" ]; then
  if [ "$PRETRAINED" = none ]; then SOURCE=(--arch "$ARCH" --random); else SOURCE=("${BACKBONE[@]}"); fi
  "$PY" -m reidserve.cli eval "${SOURCE[@]}" --data "$DATA" --size "$SIZE" --device cuda --workers "$WORKERS" \
    --json | tee "$RUN/before.json"
fi

train() {  # train NAME extra-options...
  local name="$1"; shift
  local launch=("$PY" -m reidserve.cli)
  if [ "$GPUS" -gt 1 ]; then
    launch=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m reidserve.cli)
  fi
  "${launch[@]}" train --data "$DATA" --out "$RUN/$name" "${BACKBONE[@]}" --size "$SIZE" \
    --epochs "$EPOCHS" --iters "$ITERS" --batch "$BATCH" --eps "$EPS" --k1 30 --k2 6 --min-samples 4 \
    --lr 3.5e-4 --weight-decay 5e-4 --step-size 20 --gamma 0.1 --tau 0.05 \
    --device cuda --workers "$WORKERS" --no-cache --eval-every 10 "$@"
}

echo "== 3. TMP (all positives + centroid memory)"
train tmp --loss tmp --memory
echo "== 4. single-positive baseline (cluster-centroid InfoNCE)"
train centroid --loss centroid

echo "== 5. evaluation"
for name in tmp centroid; do
  for rr in "" --rerank; do
    tag="$name${rr:+_rerank}"
    "$PY" -m reidserve.cli eval --model "$RUN/$name" --data "$DATA" --device cuda --workers "$WORKERS" $rr --json \
      | tee "$RUN/eval_$tag.json"
  done
done
"$PY" - "$RUN" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [("before training", run / "before.json")] + [
    (f"{n}{' + re-rank' if r else ''}", run / f"eval_{n}{'_rerank' if r else ''}.json")
    for n in ("tmp", "centroid") for r in (False, True)
]
print(f"{'model':<24} {'mAP':>6} {'R1':>6} {'R5':>6} {'R10':>6} {'mINP':>6}")
for name, path in rows:
    m = json.loads(path.read_text().strip().splitlines()[-1])
    print(f"{name:<24} " + " ".join(f"{100 * m[k]:6.2f}" for k in ("mAP", "rank1", "rank5", "rank10", "mINP")))
EOF
