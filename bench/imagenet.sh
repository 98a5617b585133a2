#!/usr/bin/env bash
# Pruning-space search of a torchvision ResNet-50 on ImageNet, on a GPU machine: the recipe for people who ship
# classifiers. It searches at 0.5 and at 0.25 of the parent's FLOPs (4.09 G MACs at 224x224), evaluating the
# candidates on Ray actors, one per visible GPU, gives the winner and the baselines (uniform width, global and
# layer-normalised L1, BN-gamma) the same final fine-tune, and exports the winners to verified ONNX.
#
# What it aims at (ResNet-50, ImageNet top-1; the published rows fine-tune for 100+ epochs, this recipe for
# FINAL_EPOCHS, so expect its figures below them and compare its winner with its own baselines first):
#   unpruned ResNet-50 (torchvision V1 weights)                 4.1 G MACs   76.1%
#   EagleEye (Li et al. 2020), ~2 G MACs                        2.0 G        76.4%
#   MetaPruning (Liu et al. 2019), ~2 G MACs                    2.0 G        75.4%
#   uniform 0.5x width (as reported by MetaPruning)             1.1 G        72.0%
#   this recipe, --regimes 0.5 (2.0 G) and --regimes 0.25 (1.0 G): see $OUT/*/report.md
#
# Usage (on the GPU machine, in the repository, pruneopt installed with pip install -e ".[ray]"):
#   IMAGENET=/data/imagenet R50=/weights/resnet50-0676ba61.pth bash bench/imagenet.sh [OUT]
#   DRY_RUN=1 bash bench/imagenet.sh        # check every command against the CLI; runs nothing, needs no GPU/data
# IMAGENET holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val sorted into class folders, as torchvision's
# ImageNet layout); R50 is a torchvision ResNet-50 state dict (.pth, or .safetensors). Every step resumes: rerun
# the script after an interruption. Overrides: GPUS (visible GPUs), LOADER_WORKERS (8 per GPU), SAMPLES (64),
# FINETUNE_STEPS (500), FINAL_EPOCHS (16), VAL_SIZE (10000), REGIMES ("0.5 0.25"), SEARCH_ARGS (more options).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT="${1:-runs/imagenet}"
DRY_RUN="${DRY_RUN:-0}"
SAMPLES="${SAMPLES:-64}"
FINETUNE_STEPS="${FINETUNE_STEPS:-500}"
FINAL_EPOCHS="${FINAL_EPOCHS:-16}"
VAL_SIZE="${VAL_SIZE:-10000}"
REGIMES="${REGIMES:-0.5 0.25}"
read -r -a EXTRA <<< "${SEARCH_ARGS:-}"

if [ "$DRY_RUN" = "1" ]; then
  # stand-ins that let every command line be checked: an empty class-folder tree and an empty weights file
  STAND_IN="$(mktemp -d)"
  trap 'rm -rf "$STAND_IN"' EXIT
  mkdir -p "$STAND_IN/imagenet/train/n01440764" "$STAND_IN/imagenet/val/n01440764"
  : > "$STAND_IN/resnet50.pth"
  IMAGENET="${IMAGENET:-$STAND_IN/imagenet}"
  R50="${R50:-$STAND_IN/resnet50.pth}"
  GPUS="${GPUS:-8}"
  OUT="$STAND_IN/out"
  pruneopt() { "$PY" "$ROOT/scripts/check_command.py" "$@"; }
else
  : "${IMAGENET:?set IMAGENET=/path/to/imagenet (train/ and val/ class folders)}"
  : "${R50:?set R50=/path/to/resnet50-0676ba61.pth (a torchvision state dict)}"
  GPUS="${GPUS:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}"
  pruneopt() { "$PY" -m pruneopt "$@"; }
fi
LOADER_WORKERS="${LOADER_WORKERS:-8}"

echo "== 0. environment"
if [ "$DRY_RUN" = "1" ]; then
  echo "    dry run: every command is checked against the CLI, nothing runs ($GPUS GPUs assumed)"
else
  "$PY" - "$IMAGENET" "$R50" <<'PYEOF'
import sys, torch
from pruneopt.data.sources import open_data
from pruneopt.pretrained import inspect_state_dict
print(f"    torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: {torch.cuda.device_count()}, "
      f"bf16: {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this recipe is meant for a GPU machine (DRY_RUN=1 checks it anywhere)")
import ray  # the search evaluates candidates on Ray actors, one GPU each
print(f"    ray {ray.__version__}")
print("    " + open_data(sys.argv[1]).describe())
print(f"    parent: {inspect_state_dict(sys.argv[2], 'resnet50').spec.arch} (torchvision naming)")
PYEOF
fi

echo "== 1. the parent's cost"
pruneopt count --arch resnet50 --input 3x224x224

# the candidates: 500 SGD steps of 64 images each (32k images, about a minute on one GPU), scored on 10,000 images
# held out of train/ (2% of it); the finals: FINAL_EPOCHS epochs of the other 98%, scored on val/
for REGIME in $REGIMES; do
  echo "== 2. search at $REGIME of the FLOPs"
  pruneopt search --data "$IMAGENET" --parent "$R50" --arch resnet50 --regimes "$REGIME" --band 0.02 \
    --samples "$SAMPLES" --refined-samples "$SAMPLES" --val-fraction 0.02 --val-size "$VAL_SIZE" \
    --bn-batches 16 --finetune-steps "$FINETUNE_STEPS" --batch-size 256 --final-epochs "$FINAL_EPOCHS" \
    --device cuda --backend ray --workers "$GPUS" --threads 4 --loader-workers "$LOADER_WORKERS" \
    --no-progress --out "$OUT/r50-$REGIME" "${EXTRA[@]}"
  pruneopt analyze "$OUT/r50-$REGIME"
  echo "== 3. the winner at $REGIME to verified ONNX"
  pruneopt export "$OUT/r50-$REGIME/winner" --onnx --input 3x224x224 --mean 0.485,0.456,0.406 \
    --std 0.229,0.224,0.225 --out "$OUT/r50-$REGIME/winner.onnx"
done

echo "== 4. summary (top-1 on val/ after the same final fine-tune; the aims are in this script's header)"
if [ "$DRY_RUN" != "1" ]; then
  for REGIME in $REGIMES; do
    sed -n '/## Winner vs baselines/,/^$/p' "$OUT/r50-$REGIME/report.md"
  done
fi
echo "== done"
