# Every target works on a fresh machine: the first one that needs Python creates .venv and
# installs the project with all its extras into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck unit crds demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The whole test suite: lint, type check, CRDs up to date, then every test. The chart's tests
## run promtool, from Debian's prometheus package: installed here when missing, as bench does wrk.
test: $(STAMP) lint typecheck
	command -v promtool >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }
	$(BIN)/pytest -q --durations=25

lint: $(STAMP)
	$(BIN)/ruff check operator tests benchmarks
	$(BIN)/ruff format --check operator tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

## Regenerate crds/ from the pydantic models (tests fail when they drift).
crds: $(STAMP)
	$(BIN)/mlops-operator crds --output-dir crds --docs docs/api-reference.md
	rm -f charts/mlops-operator/crds/*.yaml
	cp crds/*.yaml charts/mlops-operator/crds/

## The product's story in the local sandbox (no cluster, no Docker).
demo: $(STAMP)
	$(BIN)/mlops-operator demo

## Benchmarks: numbers, machine and versions into BENCHMARKS.md (never asserted by tests).
bench: $(STAMP)
	command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	$(BIN)/python -m benchmarks.serving_bench --output BENCHMARKS.md
	$(BIN)/python -m benchmarks.rollout_bench --output BENCHMARKS.md
	$(BIN)/python -m benchmarks.scale_bench --output BENCHMARKS.md
	$(BIN)/python -m benchmarks.scrape_bench --output BENCHMARKS.md
	$(BIN)/python -m benchmarks.drift_bench --output BENCHMARKS.md
	$(BIN)/python -m benchmarks.capture_bench --output BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
