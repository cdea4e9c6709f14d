# hhh-bench: `make demo` (the whole pipeline on the toy 3H world, CPU) or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch lies on disk on the project machines; GPU users override, e.g.
#   make demo TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.hhh-bench-installed
PYTEST_ARGS ?=

# Offline everywhere: nothing in the demo or the tests may reach a hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline
export WANDB_SILENT := true
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export WANDB_DIR ?= $(CURDIR)/.cache/wandb

.DEFAULT_GOAL := help
.PHONY: help demo test test-fast rehearse lint format bench bench-peers clean .venv

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_.-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@mkdir -p $(HF_HOME) $(WANDB_DIR)
	@touch $(STAMP)

.venv: $(STAMP) ## Create the virtualenv (torch first, then the project with its dev extras)

demo: .venv ## Run the whole pipeline on the toy 3H world (CPU) and print the results
	$(BIN)/hhh-bench experiment=toy3h

test: .venv ## Run the test suite (the end-to-end tests included)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

REHEARSAL_ROOT ?= runs/rehearsal
rehearse: .venv ## Every real-path experiment end to end on offline stand-ins (CPU), each to a report
	@for exp in paper_llama3 paper_mistral released_specialists; do \
	  echo "== rehearsal: $$exp"; \
	  $(BIN)/hhh-bench experiment=$$exp +rehearsal=small root=$(REHEARSAL_ROOT)/$$exp logger=none threads=1 \
	    || exit 1; \
	  echo "report: $(REHEARSAL_ROOT)/$$exp/report/report.md"; \
	done

test-fast: .venv ## Run the tests without the heavier end-to-end ones
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

lint: .venv ## ruff lint + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: .venv ## ruff format + autofix
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: .venv ## Speed and memory benchmarks (prints tables; peers from `make bench-peers` if present)
	$(BIN)/python benchmarks/run_all.py

BENCH_VENV ?= .venv-bench
bench-peers: ## Create .venv-bench with mergekit and fusion-bench (the `bench` extra) for bench_merge.py
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	@echo '*' > $(BENCH_VENV)/.gitignore
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(BENCH_VENV)/bin/python -m pip install --quiet $$($(BENCH_VENV)/bin/python -c \
	  "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))")

clean: ## Remove run outputs and caches (keeps the virtualenv)
	rm -rf runs outputs multirun .cache .pytest_cache .ruff_cache .hypothesis
