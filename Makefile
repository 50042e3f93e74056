# The two commands a newcomer needs: `make run` and `make test`. Each sets up what it
# needs in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch goes in first; on a GPU machine use e.g. TORCH_SPEC="torch==2.13.0"
# with the CUDA index of your choice (see docs/deploy.md for the worker image).
TORCH_SPEC ?= torch==2.13.0
MODEL ?= tiny
WORKERS ?= 1
ARGS ?=

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip

$(VENV)/.run-deps: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[worker,local]"
	touch $@

$(VENV)/.test-deps: $(VENV)/.run-deps
	$(BIN)/pip install -q --disable-pip-version-check -e ".[worker,local,dev,infra]"
	touch $@

## The fleet on one machine: embedded S3+SQS, producer, worker(s), outputs in data/output_images.
run: $(VENV)/.run-deps
	$(BIN)/python -m local_fleet --input data/input_images \
		--output data/output_images --model $(MODEL) --workers $(WORKERS) $(ARGS)

## The whole test suite (unit, engine, fleet integration, deployment artefacts) and the linter.
test: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .

bench: $(VENV)/.test-deps
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.overlap_bench
	$(BIN)/python -m bench.png_bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data/output_images/*
