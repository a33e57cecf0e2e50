# recsearch — run `make` or `make help` for the list of targets.
# Set-up is automatic: every target that needs Python creates .venv and installs into it first.

PYTHON  ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Real datasets come from ../shared/datasets when this checkout sits beside it (tests and CI).
SHARED_DATA := $(abspath ../shared/datasets)
export RECSEARCH_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),$(abspath data))

.DEFAULT_GOAL := help
.PHONY: help install demo test lint bench clean

help:  ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install recsearch with its dev tools (TORCH='torch==X' to choose the build)

demo: $(STAMP)  ## the main job: an ASHA sweep of four families on synthetic data -> runs/demo/<time>/
	$(BIN)/recsearch sweep +experiment=demo

test: $(STAMP)  ## run the whole test suite (the command CI runs)
	$(BIN)/python -m pytest -q

bench: $(STAMP)  ## speed and memory of every model at ml-100k, 1M and 10M (~25 min) -> bench/results/perf.md
	$(BIN)/python bench/perf.py

lint: $(STAMP)  ## ruff over the package, tests and benchmarks
	$(BIN)/ruff check recsearch serve tests bench

clean:  ## remove the virtual environment and outputs
	rm -rf $(VENV) runs .pytest_cache
