#!/usr/bin/env bash
# The main job, end to end on the Tux Paint demo data, on one split (seed 0: the same 70/15/15 split as the
# manifest's own, so the retrieval bundle, the tagger and the captioner all train on one split):
#   manifest -> features -> the served W2VV configuration -> bundle -> served tagger + captioner attached
#   -> FAISS index (with predicted tags) -> server (gRPC + HTTP web page)
#   -> a few Chinese queries, a tag filter, an image query, Tag and Caption through the CLI -> the web page's URL.
# The experiment tables (every variant and strategy over 5 seeds, A3VSE) are `make experiments`.
#
# The server keeps running when the demo ends (its pid in $RUNS/server.pid; a re-run stops it first);
# KEEP_SERVER=0 stops it at the end. Ports: PORT (gRPC, 50051), HTTP_PORT (8080), METRICS_PORT (9464).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
RUNS=${RUNS:-runs/demo}
PORT=${PORT:-50051}
HTTP_PORT=${HTTP_PORT:-8080}
METRICS_PORT=${METRICS_PORT:-9464}
# torch threads per training command: 1. The models are small MLP/linear heads on cached features; on 2 cores
# shared with other jobs two OpenMP threads per process wait on each other (a tagger-sized MLP epoch: 1.12 s wall
# with 1 thread vs 8.59 s with 2 at load 15, medians interleaved; scripts/torch_threads_bench.py, docs/benchmarks.md).
THREADS=${THREADS:-1}
KEEP_SERVER=${KEEP_SERVER:-1}
T0=${DEMO_T0:-$(date +%s)}  # `make demo` passes the time it started, before setup
X="$VENV/bin/xlsearch"
SEED=0

elapsed() { echo $(($(date +%s) - T0)); }
# CPU seconds (user + sys) of the finished child processes so far: on a shared machine wall time follows the load,
# CPU time much less, so the closing table shows both per step.
# (`times` must run in this shell: in a $(...) subshell it would see no children.)
times_file=$(mktemp)
cpu_to_file() { times >"$times_file"; }
cpu_from_file() {
  awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } printf "%.0f", t }' \
    "$times_file"
}
profile=()
last_label="setup (scripts/setup.sh, before this script)"
last_wall=0
last_cpu=0
close_step() {
  local now c
  now=$(elapsed)
  cpu_to_file
  c=$(cpu_from_file)
  local used=$((c - last_cpu))
  [ "$last_wall" = 0 ] && used="-"  # setup ran before this script: its CPU is not a child of this shell
  profile+=("$(printf '%6s s %6s s  %s' $((now - last_wall)) "$used" "$last_label")")
  last_wall=$now
  last_cpu=$c
}
step() {
  close_step
  last_label="$*"
  printf '\n== [%s s] %s\n' "$(elapsed)" "$*"
}

pidfile="$RUNS/server.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "stopping the previous demo server (pid $(cat "$pidfile"))"
  kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.2; done
fi
rm -f "$pidfile"

step "retrieval: the served configuration only, split seed $SEED"
"$VENV/bin/xlsearch-train" --data data/tuxpaint --runs "$RUNS" --seeds "$SEED" --served-only --threads "$THREADS"

# The tagger and the captioner assume nothing about the data: the Tux Paint extras are named here.
# --english-only tuxpaint: the stamps without a zh_CN line feed the English stage of the cascade candidates;
# the served tagger is the candidate with the best validation F@5 (runs/tagging/served_choice.json).
step "the served tagger (chosen on validation), trained on the same split, attached to $RUNS/bundle"
"$VENV/bin/xlsearch-train-tagger" --data data/tuxpaint --runs runs/tagging --features-from "$RUNS" \
  --seeds "$SEED" --served-only --bundle "$RUNS/bundle" --threads "$THREADS" --english-only tuxpaint

# --corpus-a tuxpaint: the stamps' zh_TW lines, Sequential Learning's corpus A (as `make captioning`); the served
# strategy is the best validation CIDEr-D among the results already in runs/captioning (monolingual when none).
step "the served captioner, trained on the same split, attached to $RUNS/bundle"
"$VENV/bin/xlsearch-train-captioner" --data data/tuxpaint --retrieval-runs "$RUNS" --runs runs/captioning \
  --seeds "$SEED" --served-only --bundle "$RUNS/bundle" --threads "$THREADS" --corpus-a tuxpaint

step "indexing the whole Tux Paint set with the served bundle"
"$X" index --manifest data/tuxpaint --bundle "$RUNS/bundle" --out "$RUNS/index"

step "starting the server: gRPC 127.0.0.1:$PORT, HTTP + web page 127.0.0.1:$HTTP_PORT, metrics :$METRICS_PORT"
"$X" serve --bundle "$RUNS/bundle" --index "$RUNS/index" --port "$PORT" --metrics-port "$METRICS_PORT" \
  --http-port "$HTTP_PORT" >"$RUNS/server.log" 2>&1 &
server=$!
echo "$server" >"$pidfile"
stop_server() { kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -f "$pidfile"; }
trap 'stop_server' ERR INT TERM
[ "$KEEP_SERVER" = 1 ] || trap 'stop_server' EXIT
target="127.0.0.1:$PORT"
for _ in $(seq 1 240); do
  "$X" health --target "$target" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$RUNS/server.log"; exit 1; }
  sleep 0.5
done
"$X" stats --target "$target"

first=1
for q in "一只红色的袋鼠" "青蛙" "一辆红色的消防车" "在水里游泳的动物"; do
  step "xlsearch search \"$q\" --top-k 5"
  "$X" search "$q" --top-k 5 --target "$target"
  if [ $first = 1 ]; then
    echo "(first search answered $(elapsed) s after the demo started)"
    first=0
  fi
done
image=/usr/share/tuxpaint/stamps/animals/birds/penguin.png
[ -f "$image" ] || image=$(find /usr/share/tuxpaint/stamps -name '*.png' | sort | head -1)
step "xlsearch tag $image"
"$X" tag "$image" --target "$target"
tag=$("$X" tag "$image" --target "$target" --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["tags"][0]["tag"])')
step "xlsearch search \"动物\" --tag $tag --top-k 5   (only images whose predicted tags include $tag)"
"$X" search "动物" --tag "$tag" --top-k 5 --target "$target"
step "xlsearch search --image $image --top-k 5   (search by image)"
"$X" search --image "$image" --top-k 5 --target "$target"
step "xlsearch caption $image --n-best 3 --recommend"
"$X" caption "$image" --n-best 3 --recommend --target "$target"

close_step
rm -f "$times_file"
echo
echo "    wall      CPU  step (CPU: user + sys of the step's commands)"
printf '%s\n' "${profile[@]}"
echo
echo "demo done in $(elapsed) s."
echo "web search page: http://127.0.0.1:$HTTP_PORT/"
if [ "$KEEP_SERVER" = 1 ]; then
  echo "the server keeps running (pid $server, log $RUNS/server.log); stop it with: kill $server"
fi
