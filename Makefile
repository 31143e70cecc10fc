# One entry point for people and CI. `make demo`: install and run the embedded demo.
# `make ci`: install everything (Python deps + Kafka, anvil, btcd) and run the whole gate.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: demo install install-dev services check format lint types contracts test ci bench schemas

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/activate
	$(BIN)/pip install --quiet .

install-dev: $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[dev,confluent]'

demo: install
	$(BIN)/drainwatch demo

services:
	bash scripts/install-services.sh
	bash scripts/install-postgres.sh
	bash scripts/install-browser.sh
	bash scripts/install-prometheus.sh

format:
	$(BIN)/ruff format .

schemas:
	$(BIN)/drainwatch schemas

# The gate: format check, lint, types, import contracts, tests (real services included).
check:
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(PY) -m pytest

ci: install-dev services check

bench: install-dev
	$(PY) benchmarks/bench_backtest.py
	$(PY) benchmarks/bench_memory.py
