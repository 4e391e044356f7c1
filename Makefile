# xlsearch developer commands. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
SEEDS ?= 0,1,2,3,4


.PHONY: help setup proto demo experiments retrieval tagging captioning a3vse loadbench test lint format

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup:  ## install Debian packages and the virtual environment (idempotent)
	@bash scripts/setup.sh

proto: setup  ## generate the gRPC/protobuf code (xlsearch/v1) from proto/
	$(PY) proto/build.py

# The start time is taken before setup, so the demo can say when its first search was answered.
demo:  ## the main job on Tux Paint: served model + tagger + captioner on one split, index, serve, queries, web page
	@t0=$$(date +%s); bash scripts/setup.sh && DEMO_T0=$$t0 VENV=$(VENV) bash scripts/demo.sh

experiments: retrieval tagging captioning a3vse  ## every experiment table (the results in docs/benchmarks.md)

retrieval: setup  ## retrieval table: every W2VV variant of configs/tuxpaint.json over SEEDS (runs/demo)
	$(VENV)/bin/xlsearch-train --data data/tuxpaint --runs runs/demo --seeds $(SEEDS)

tagging: setup  ## tagging table (MLP / Multi-task / Cascading MLP x k rules) over SEEDS; needs `make demo` features
	$(VENV)/bin/xlsearch-train-tagger --data data/tuxpaint --runs runs/tagging --features-from runs/demo --seeds $(SEEDS) --english-only tuxpaint

captioning: setup  ## captioning table (monolingual / transfer / sequential / tags vs NN recommendation) over SEEDS
	$(VENV)/bin/xlsearch-train-captioner --data data/tuxpaint --retrieval-runs runs/demo --runs runs/captioning --seeds $(SEEDS) --corpus-a tuxpaint

a3vse: setup  ## A3VSE sparse-annotation experiment (20/50/100% annotated) over seeds 0,1,2
	$(VENV)/bin/xlsearch-train-a3vse --data data/tuxpaint --runs runs/a3vse --seeds 0,1,2 --backbone-runs runs/demo

loadbench: setup  ## serving benchmarks: gRPC load + index scale-up (JSON in runs/loadbench/)
	$(PY) -m xlsearch_bench grpc --bundle runs/demo/bundle --index runs/demo/index --manifest data/tuxpaint --concurrency 1,8 --repeat 3 --out runs/loadbench/grpc.json
	$(PY) -m xlsearch_bench scale --bundle runs/demo/bundle --index runs/demo/index --manifest data/tuxpaint --queries 200 --onnx-threads 1 --e5-threads 1 --search-threads 1 --build-threads 1 --pq-polysemous off --out runs/loadbench/scale.json

test: setup  ## the test suite (what CI runs)
	$(PY) -m pytest -q --durations=10

lint: setup  ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup  ## ruff autoformat
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .
