# xlsearch developer commands. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
SEEDS ?= 0,1,2,3,4


.PHONY: help setup proto demo serve test lint format

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup:  ## install Debian packages and the virtual environment (idempotent)
	@bash scripts/setup.sh

proto: setup  ## generate the gRPC/protobuf code (xlsearch/v1) from proto/
	$(PY) proto/build.py

demo: setup  ## end to end on Tux Paint: train + benchmark table, index, serve, example queries
	SEEDS=$(SEEDS) VENV=$(VENV) bash scripts/demo.sh

test: setup  ## the test suite (what CI runs)
	$(PY) -m pytest -q --durations=10

lint: setup  ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup  ## ruff autoformat
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .
