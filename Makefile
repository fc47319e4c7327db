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

.PHONY: run train serve test lint install data bench clean browser retrain tools

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
test: install lint data browser tools
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered

## Debian's chromium, driven by Playwright in tests/integration/test_web_ui.py (Playwright's own
## browser download is not used). Without root or a package mirror the test skips and says why.
browser:
	@test -x /usr/bin/chromium || { sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium; } \
		|| echo "warning: could not install chromium; the web page test will be skipped"

## Linters for infra/ and .github/ (tests/infra/): promtool from Debian's prometheus package
## (apt as root, else sudo -n) and checkov in a venv of its own (it pins boto3 and packaging
## versions that break ours). If either install fails, the tests that need it skip, naming why.
tools: install
	@command -v promtool >/dev/null || { $$([ "$$(id -u)" = 0 ] || echo sudo -n) apt-get update -qq \
		&& $$([ "$$(id -u)" = 0 ] || echo sudo -n) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends prometheus >/dev/null; } \
		|| echo "warning: could not install prometheus; the promtool tests will be skipped"
	@test -x .tools/checkov/bin/checkov || { $(PYTHON) -m venv .tools/checkov \
		&& .tools/checkov/bin/pip install --quiet checkov; } \
		|| echo "warning: could not install checkov; the checkov test will be skipped"

lint: install
	$(BIN)/ruff check .

## Serving benchmark (needs wrk: apt-get install wrk); trains ./registry first if it is empty.
bench: install
	@test -e registry/latest.txt || $(MAKE) train
	$(BIN)/python scripts/bench_serving.py --registry "$(REGISTRY)" --out benchmarks/results/serving.json

## The retrain loop (what .github/workflows/retrain.yml runs): drift report, train KINDS on the
## last WINDOW of SNAPSHOTS, gate against production, publish; PROMOTE=yes moves production when
## the gate passes. Exit 3 when the gate refuses. Inputs reach the command as environment
## variables, never spliced into the recipe's text. docs/retrain.md.
SNAPSHOTS ?=
WINDOW ?= 90d
KINDS ?= popularity,itemcf,als,ncf
PROMOTE ?= no
DRY_RUN ?= no
RETRAIN_BY ?= make
REPORT_DIR ?= reports
export REGISTRY SNAPSHOTS WINDOW KINDS PROMOTE DRY_RUN RETRAIN_BY REPORT_DIR

retrain: install
	@test -n "$$SNAPSHOTS" || { echo "error: SNAPSHOTS (the ingestor store URI) is not set" >&2; exit 2; }
	@mkdir -p "$$REPORT_DIR"
	$(BIN)/python -m trainer retrain --registry "$$REGISTRY" --snapshots "$$SNAPSHOTS" \
		--window "$$WINDOW" --kinds "$$KINDS" --by "$$RETRAIN_BY" \
		$$(case "$$PROMOTE" in yes|true|1) echo --promote;; esac) \
		$$(case "$$DRY_RUN" in yes|true|1) echo --dry-run;; esac) \
		--report "$$REPORT_DIR/retrain.json" --summary "$$REPORT_DIR/retrain.md"

clean:
	rm -rf registry reports .pytest_cache .coverage
