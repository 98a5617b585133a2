#!/usr/bin/env bash
# The re-ID chain end to end (what `make demo-reid` runs after set-up), on synthetic people:
#   1. reidserve synth    a small synthetic dataset in the Market-1501 layout (RUN/data)
#   2. reidserve train    unsupervised TMP training of a resnet20 re-ID model, a tiny budget (RUN/train)
#   3. pruneopt search    a quick re-ID pruning search from that model at half its FLOPs (RUN/search)
#   4. pruneopt export    the winner, whole (backbone + GeM + BN neck + L2), to verified ONNX (RUN/winner.onnx)
#   5. reidserve serve    the ONNX winner behind the retrieval service (loopback, a free port, gallery in RUN/gallery)
#   6. reidserve query import   the dataset's gallery (bounding_box_test/) into the service, many images per request
#   7. reidserve query eval     every query image searched through the service, scored under the Market-1501
#                        protocol, printed next to `reidserve eval` of the same model (torch, no service)
# Every step resumes or is idempotent: re-running the script re-uses the data, the training, the search, the export
# and the gallery (the import sends only what is missing).
# Usage: scripts/demo_reid.sh [RUN_DIR]   (default runs/demo-reid; BIN=.venv/bin by default)
set -euo pipefail
RUN="${1:-runs/demo-reid}"
BIN="${BIN:-.venv/bin}"
WORKERS="${WORKERS:-2}"
SIZE=64x32
START=$SECONDS
mkdir -p "$RUN"

say() { printf '\n== %s (%d s)\n' "$1" $((SECONDS - START)); }

say "synthetic data"
if [ ! -f "$RUN/data/.complete" ]; then
  rm -rf "$RUN/data"
  "$BIN/reidserve" synth --out "$RUN/data" --ids 40 --cams 3 --imgs-per-id 3-4 --size "$SIZE" --seed 0
  touch "$RUN/data/.complete"
fi

# clustering of a small dataset: few neighbours, a tight radius, DBSCAN outliers kept as one pseudo-identity each
CLUSTER=(--k1 10 --k2 3)
say "reidserve train (tiny budget)"
"$BIN/reidserve" train --data "$RUN/data" --out "$RUN/train" --arch resnet20 --size "$SIZE" --epochs 2 --iters 8 \
  --batch 4x4 "${CLUSTER[@]}" --eps 0.3 --outliers singleton --no-progress

say "pruneopt search --task reid --quick"
"$BIN/pruneopt" search --task reid --quick --parent "$RUN/train" --data "$RUN/data" --out "$RUN/search" \
  --size "$SIZE" --regimes 0.5 --samples 4 --refined-samples 4 --finetune-steps 4 --final-steps 10 --final-rounds 1 \
  --reid-batch 4x4 "${CLUSTER[@]}" --cluster-eps 0.3 --outliers singleton --workers "$WORKERS" --no-progress

say "pruneopt export"
if [ ! -f "$RUN/winner.onnx" ] || [ "$RUN/search/winner/spec.json" -nt "$RUN/winner.onnx" ]; then
  # winner/ is the re-ID model the search scored (backbone + GeM + BN neck + L2) and records its preprocessing
  "$BIN/pruneopt" export "$RUN/search/winner" --onnx --out "$RUN/winner.onnx"
fi

say "reidserve serve"
rm -f "$RUN/port"
"$BIN/reidserve" serve --model "$RUN/winner.onnx" --data-dir "$RUN/gallery" --port 0 --port-file "$RUN/port" \
  --log-level warning >"$RUN/serve.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
"$BIN/python" - "$RUN/port" "$SERVER" <<'EOF'
import os, sys, time, urllib.request
port_file, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 180
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited; see its log: " + port_file.rsplit("/", 1)[0] + "/serve.log")
    try:
        port = open(port_file).read().strip()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200:
                break
    except (OSError, ValueError):
        pass
    if time.monotonic() > deadline:
        sys.exit("the server was not ready within 180 s")
    time.sleep(0.3)
EOF
URL="http://127.0.0.1:$(cat "$RUN/port")"
QUERY=("$BIN/reidserve" query --url "$URL" --token-file "$RUN/gallery/token")

say "reidserve query import (the gallery, bounding_box_test/)"
"${QUERY[@]}" import "$RUN/data"

say "rank-1 / mAP: reidserve eval (torch) and through the service"
"$BIN/reidserve" eval --model "$RUN/search/winner" --data "$RUN/data" --json >"$RUN/eval-torch.json"
"${QUERY[@]}" eval "$RUN/data" --json >"$RUN/eval-service.json"
"$BIN/python" - "$RUN/eval-torch.json" "$RUN/eval-service.json" <<'EOF'
import json, sys
torch_eval, service = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{'':34} {'mAP':>8} {'rank-1':>8} {'rank-5':>8} {'mINP':>8}")
for name, r in (("reidserve eval (torch model)", torch_eval), ("through the service (winner.onnx)", service)):
    print(f"{name:34} " + " ".join(f"{100 * r[k]:8.2f}" for k in ("mAP", "rank1", "rank5", "mINP")))
gap = max(abs(torch_eval[k] - service[k]) for k in ("mAP", "rank1", "rank5", "mINP"))
print(f"largest difference: {100 * gap:.4f} points ({service['queries']} queries, gallery {service['gallery_size']})")
EOF
say "done"
