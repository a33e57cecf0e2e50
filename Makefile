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

# Two pytest workers, each running whole files (module fixtures such as the multi-node cluster
# start once): the Ray tests mostly wait (7.4 CPU-minutes in a 14-18 minute serial run), so two
# at once take about 10 minutes on 2 cores. One file: `.venv/bin/python -m pytest tests/test_x.py`.
test: $(STAMP)  ## run the whole test suite (the command CI runs)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The benchmarks `make bench` runs, each writing bench/results/<name>.{json,md}: every script that
# needs no argument, a few hours in all. Left out by default: ml100k_sweeps (every family swept on
# ml-100k, hours), and serve_load and events_latency (they load a model directory you name); run
# them as `make bench BENCH=ml100k_sweeps` or `python bench/serve_load.py DIR`.
BENCH ?= quality perf vs_recbole neumf_step sweep_overhead asha_vs_fifo early_stopping crossval small_catalogue \
         deepcf_rating cold_start cold_start_seeds cold_start_region cold_start_blend history_scoring lstm_formulations bundles telemetry_overhead cluster_walkthrough \
         blend_sweep blend_seeds

bench: $(STAMP)  ## run the benchmarks in BENCH (default: all but ml100k_sweeps, serve_load, events_latency) -> bench/results/
	@for name in $(BENCH); do echo "== bench/$$name.py"; $(BIN)/python bench/$$name.py || exit 1; done

lint: $(STAMP)  ## ruff over the package, tests and benchmarks
	$(BIN)/ruff check recsearch serve tests bench

clean:  ## remove the virtual environment and outputs
	rm -rf $(VENV) runs .pytest_cache
