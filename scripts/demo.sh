#!/usr/bin/env bash
# The main job, end to end on the Tux Paint demo data:
#   manifest -> features -> W2VV encoders (every variant, every seed) -> bundles -> benchmark table
#   -> tagging and captioning tables, served tagger + captioner attached to the served bundle
#   -> FAISS index of the served bundle (with predicted tags) -> gRPC server
#   -> a few Chinese queries, a tag filter, Tag and Caption through the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
RUNS=${RUNS:-runs/demo}
SEEDS=${SEEDS:-0,1,2,3,4}
# Captioning trains four strategies per split (~14 min per split on 2 cores): the demo runs the first split only;
# `make captioning` runs all of them.
CAPTION_SEEDS=${CAPTION_SEEDS:-${SEEDS%%,*}}
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9464}
X="$VENV/bin/xlsearch"

"$VENV/bin/xlsearch-train" --data data/tuxpaint --runs "$RUNS" --seeds "$SEEDS"

echo
echo "== tagging: experiment table, then the served tagger (Cascading MLP + LQP) into $RUNS/bundle"
"$VENV/bin/xlsearch-train-tagger" --data data/tuxpaint --runs runs/tagging --features-from "$RUNS" \
  --seeds "$SEEDS" --bundle "$RUNS/bundle"

echo
echo "== captioning: experiment table, then the served captioner into $RUNS/bundle"
"$VENV/bin/xlsearch-train-captioner" --data data/tuxpaint --retrieval-runs "$RUNS" --runs runs/captioning \
  --seeds "$CAPTION_SEEDS" --bundle "$RUNS/bundle"

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
image=/usr/share/tuxpaint/stamps/animals/birds/penguin.png
[ -f "$image" ] || image=$(find /usr/share/tuxpaint/stamps -name '*.png' | sort | head -1)
echo
echo "== xlsearch tag $image"
"$X" tag "$image" --target "$target"
tag=$("$X" tag "$image" --target "$target" --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["tags"][0]["tag"])')
echo
echo "== xlsearch search \"动物\" --tag $tag --top-k 5   (only images whose predicted tags include $tag)"
"$X" search "动物" --tag "$tag" --top-k 5 --target "$target"
echo
echo "== xlsearch caption $image --n-best 3 --recommend"
"$X" caption "$image" --n-best 3 --recommend --target "$target"
