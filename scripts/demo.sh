#!/usr/bin/env bash
# The main job, end to end (what `make demo` runs after set-up):
#   1. pruneopt search   a quick pruning-space search of resnet20 on Fashion-MNIST at half its FLOPs -> winner
#   2. pruneopt export   the winner to verified ONNX (metadata: input size, mean/std, from winner/preprocess.json)
#   3. reidserve serve   the ONNX winner behind the retrieval service (loopback, a free port, gallery in RUN/gallery)
#   4. reidserve demo-gallery + query search   fill the gallery with Fashion-MNIST test images, ask who held-out
#                        query images are; the answer lists the top-5 gallery items (their class is in the item id)
# Every step resumes or is idempotent: re-running the script re-uses the search and the gallery.
# Usage: scripts/demo.sh [RUN_DIR]   (default runs/demo; BIN=.venv/bin by default)
set -euo pipefail
RUN="${1:-runs/demo}"
BIN="${BIN:-.venv/bin}"
WORKERS="${WORKERS:-2}"

"$BIN/pruneopt" search --quick --arch resnet20 --data fashion-mnist --regimes 0.5 --out "$RUN" --workers "$WORKERS"

# the winner folder records its preprocessing (grey 28x28, Fashion-MNIST's mean/std): the export reads it
"$BIN/pruneopt" export "$RUN/winner" --onnx --out "$RUN/winner.onnx"

PORT="$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
mkdir -p "$RUN/gallery"
"$BIN/reidserve" serve --model "$RUN/winner.onnx" --data-dir "$RUN/gallery" --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT

"$BIN/python" - "$URL" <<'EOF'
import sys, time, urllib.request
url = sys.argv[1] + "/healthz"
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"the server did not answer {url} within 120 s")
    time.sleep(0.5)
EOF

"$BIN/reidserve" demo-gallery --url "$URL" --token-file "$RUN/gallery/token" --fashion-mnist --count 2000 \
  --queries 3 --queries-out "$RUN/queries"
echo "== who are these? (top-5 gallery items for each held-out query image)"
"$BIN/reidserve" query --url "$URL" --token-file "$RUN/gallery/token" search -k 5 "$RUN"/queries/*.png
