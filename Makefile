# Marquee: the README's two commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Our copy of MovieLens 100K when it exists beside the repo, else a checksummed download into data/.
MOVIELENS_DIR ?= $(if $(wildcard ../shared/datasets/ml-100k/u.data),../shared/datasets/ml-100k,data/ml-100k)
REGISTRY ?= file://$(CURDIR)/registry
HOST ?= 127.0.0.1
PORT ?= 8080
export OPENBLAS_NUM_THREADS := 1
export MOVIELENS_DIR

.PHONY: run train serve test lint install data bench clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[serve,train,ingest,dev]'
	@touch $@

install: $(BIN)/.installed

data: install
	@if [ ! -e "$(MOVIELENS_DIR)/u.data" ] && [ ! -e "$(MOVIELENS_DIR)/ratings.dat" ] && [ ! -e "$(MOVIELENS_DIR)/ratings.csv" ]; then \
		$(BIN)/python -m trainer download ml-100k --dest $(dir $(MOVIELENS_DIR:/=)); fi

## Command 1: install, train all four kinds on MovieLens, publish a release, serve it.
run: train serve

train: data
	$(BIN)/python -m trainer train --data "$(MOVIELENS_DIR)" --registry "$(REGISTRY)" --report reports/latest.json

serve: install
	$(BIN)/python -m recommender --registry "$(REGISTRY)" --host $(HOST) --port $(PORT)

## Command 2: install dev dependencies, lint, run the whole suite with coverage.
test: install lint data
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered

lint: install
	$(BIN)/ruff check .

## Serving benchmark (needs wrk: apt-get install wrk); trains ./registry first if it is empty.
bench: install
	@test -e registry/latest.txt || $(MAKE) train
	$(BIN)/python scripts/bench_serving.py --registry "$(REGISTRY)" --out benchmarks/results/serving.json

clean:
	rm -rf registry reports .pytest_cache .coverage
