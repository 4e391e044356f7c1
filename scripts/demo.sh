#!/usr/bin/env bash
# The main job, end to end on the Tux Paint demo data:
#   manifest -> features -> W2VV encoders (every variant, every seed) -> bundles -> benchmark table
#   -> FAISS index of the served bundle -> gRPC server -> a few Chinese queries through the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
RUNS=${RUNS:-runs/demo}
SEEDS=${SEEDS:-0,1,2,3,4}
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9464}
X="$VENV/bin/xlsearch"

"$VENV/bin/xlsearch-train" --data data/tuxpaint --runs "$RUNS" --seeds "$SEEDS"

echo
echo "== indexing the whole Tux Paint set with the served bundle"
"$X" index --manifest data/tuxpaint --bundle "$RUNS/bundle" --out "$RUNS/index"

echo
echo "== starting the server on 127.0.0.1:$PORT (metrics on :$METRICS_PORT)"
"$X" serve --bundle "$RUNS/bundle" --index "$RUNS/index" --port "$PORT" --metrics-port "$METRICS_PORT" \
  > "$RUNS/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
target="127.0.0.1:$PORT"
for _ in $(seq 1 120); do
  "$X" health --target "$target" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$RUNS/server.log"; exit 1; }
  sleep 0.5
done
"$X" stats --target "$target"
for q in "一只红色的袋鼠" "青蛙" "一辆红色的消防车" "在水里游泳的动物"; do
  echo
  echo "== xlsearch search \"$q\" --top-k 5"
  "$X" search "$q" --top-k 5 --target "$target"
done
