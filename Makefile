# hhh-bench: `make demo` (the whole pipeline on the toy 3H world, CPU) or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Everything but torch installs from the lock file, with hashes (pip-tools; `make lock` rewrites
# it from pyproject.toml). torch's version is pinned there too, on its one line without hashes:
# its build is TORCH_SPEC's, installed first. A CPU build lies on disk on the project machines;
# GPU users override, e.g.
#   make demo TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
# tests/test_lock.py checks that TORCH_VERSION, the lock and pyproject.toml agree.
LOCK := requirements.lock
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
PIP_SPEC ?= pip==26.3
STAMP := $(VENV)/.hhh-bench-installed
PYTEST_ARGS ?=
# make test runs the suite on TEST_WORKERS processes (pytest-xdist; 0: one process, no workers)
# with coverage (pytest-cov; fails under [tool.coverage.report] fail_under). docs/testing.md
TEST_WORKERS ?= 2
COV_ARGS ?= --cov --cov-report=term

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
.PHONY: help demo sensitivity test test-fast battery rehearse lint format bench bench-peers lock serve-env serve-lock clean .venv

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_.-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# torch (TORCH_SPEC) first; then every locked package, hash-checked: pip resolves the lock as a
# whole, so a dependency missing from it, or an installed torch of another version than its pin,
# stops the install; then the project itself, editable, with no dependencies of its own.
$(STAMP): pyproject.toml setup.py $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_SPEC)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	@mkdir -p $(HF_HOME) $(WANDB_DIR)
	@touch $(STAMP)

.venv: $(STAMP) ## Create the virtualenv (torch first, then the lock, then the project, editable)

demo: .venv ## Run the whole pipeline on the toy 3H world (CPU) and print the results
	$(BIN)/hhh-bench experiment=toy3h

# The verdict as a function of the world's knobs (issue 29, part 5; docs/toy_world.md,
# "Sensitivity"): 7 worlds x the 3 design seeds (experiment=toy3h_sensitivity, one root per world
# under SENS_ROOT, SENS_JOBS worlds at a time), then the figure and the table.
SENS_ROOT ?= runs/toy3h_sensitivity
SENS_JOBS ?= 2
sensitivity: .venv ## Sweep the toy world's knobs one at a time (42 min on a shared 2-core CPU) and draw the verdicts
	$(BIN)/python experiments/toy3h_sensitivity/sweep.py $(SENS_ROOT) --jobs $(SENS_JOBS) --hhh-bench $(BIN)/hhh-bench
	$(BIN)/python experiments/toy3h_sensitivity/draw.py $(SENS_ROOT) --figure docs/figures/toy_sensitivity.png --table $(SENS_ROOT)/sensitivity.md

test: .venv ## Run the test suite (the end-to-end tests included), with coverage
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not rehearse and not battery" $(COV_ARGS) $(PYTEST_ARGS)

battery: .venv ## The acceptance battery: 250+ bad inputs, each refused by name, no traceback (tests/battery)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m battery -p no:cacheprovider $(PYTEST_ARGS)

rehearse: .venv ## Every real-path experiment end to end on offline stand-ins (CPU), each to a report
	@# paper_llama3 (and its root moved: every stage reused), paper_mistral, released_specialists
	@# and `accelerate launch` with two processes, as tests on TEST_WORKERS workers (-m rehearse:
	@# docs/testing.md), the network unreachable
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m rehearse -p no:cacheprovider $(PYTEST_ARGS)

test-fast: .venv ## Run the tests without the heavier end-to-end ones
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not e2e and not rehearse and not battery" $(PYTEST_ARGS)

lint: .venv ## ruff lint + format check + the import contracts (the floors: docs/architecture.md)
	$(BIN)/ruff check src tests benchmarks serve
	$(BIN)/ruff format --check src tests benchmarks serve
	$(BIN)/lint-imports --no-logo

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

# The lock: pyproject.toml's runtime dependencies and the dev extra, resolved for Python 3.11 on
# Linux x86_64 against torch==$(TORCH_VERSION) (its CPU build from /opt/wheels on the project
# machines), every package with the sha256 of each of its release files on PyPI. Existing pins are
# kept unless pyproject.toml rules them out; `make lock LOCK_ARGS=--upgrade` re-resolves all of
# them, LOCK_ARGS='--upgrade-package transformers' one. The tools live in their own venv.
LOCK_VENV ?= .venv-lock
LOCK_TOOLS ?= pip==26.3 pip-tools==7.6.2
LOCK_ARGS ?=
lock: ## Rewrite requirements.lock from pyproject.toml (pip-compile --generate-hashes)
	@test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && \
	  echo '*' > $(LOCK_VENV)/.gitignore && \
	  $(LOCK_VENV)/bin/python -m pip install --quiet $(LOCK_TOOLS); }
	@echo 'torch==$(TORCH_VERSION)' > $(LOCK_VENV)/torch.txt
	CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes \
	  --allow-unsafe --strip-extras --extra dev --constraint $(LOCK_VENV)/torch.txt \
	  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS) \
	  --output-file $(LOCK) pyproject.toml
	@# torch keeps its version and loses its hashes (and a local label such as +cpu): its build
	@# is TORCH_SPEC's; the header says how the lock is used
	@awk '/^#    make lock$$/ { print; print "#"; \
	  print "# make demo / make test (the .venv target) install torch first (TORCH_SPEC, the Makefile),"; \
	  print "# then this file with pip install --require-hashes -r requirements.lock, then the project"; \
	  print "# with pip install --no-deps -e . torch is the one line without hashes: its version is pinned"; \
	  print "# here, its build (CPU, CUDA) is chosen by TORCH_SPEC. Resolved for Python 3.11 on Linux x86_64;"; \
	  print "# tests/test_lock.py checks it against pyproject.toml. docs/reproduce.md says more."; next } \
	  /^torch==/ { sub(/\+[^ ]*/, ""); sub(/ *\\$$/, ""); \
	  print $$0 "  # no hashes: installed first by TORCH_SPEC (Makefile)"; drop = 1; next } \
	  drop && /^ +--hash=/ { next } { drop = 0; print }' $(LOCK) > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

# Inference servers for eval.backend=server (docs/evaluation.md, "Backends and servers"): vLLM or
# SGLang in a venv of their own, installed by uv from their own hash-checked lock
# (serve/<server>.lock, from serve/<server>.in): their pins (torch, transformers below the
# project's) never meet the project's, which reaches them over HTTP only. A CUDA machine with the
# package registries; not part of make test. Then: eval.backend=server
# eval.server.launch=$(SERVER) eval.server.python=$(SERVE_VENV)/bin/python
SERVE_VENV ?= .venv-serve
SERVER ?= vllm
UV_SPEC ?= uv==0.13.8
# the platform each lock is resolved for (sglang 0.5.23 ships manylinux_2_34 wheels only)
SERVE_PLATFORM_vllm := x86_64-manylinux_2_28
SERVE_PLATFORM_sglang := x86_64-manylinux_2_34
serve-env: ## Build .venv-serve with an inference server (SERVER=vllm|sglang) from serve/$(SERVER).lock (uv)
	@test -f serve/$(SERVER).lock || { echo "serve/$(SERVER).lock does not exist: SERVER=vllm or sglang"; exit 2; }
	@test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	@echo '*' > $(SERVE_VENV)/.gitignore
	$(SERVE_VENV)/bin/python -m pip install --quiet $(UV_SPEC)
	$(SERVE_VENV)/bin/uv pip sync --python $(SERVE_VENV)/bin/python --require-hashes \
	  --index-url https://pypi.org/simple serve/$(SERVER).lock
	$(SERVE_VENV)/bin/python -c "import importlib.metadata as m; print('$(SERVER)', m.version('$(SERVER)'))"

serve-lock: ## Rewrite serve/$(SERVER).lock from serve/$(SERVER).in (uv pip compile --generate-hashes)
	@test -x $(SERVE_VENV)/bin/uv || { $(PYTHON) -m venv $(SERVE_VENV) && echo '*' > $(SERVE_VENV)/.gitignore && \
	  $(SERVE_VENV)/bin/python -m pip install --quiet $(UV_SPEC); }
	$(SERVE_VENV)/bin/uv pip compile serve/$(SERVER).in --generate-hashes --python-version 3.11 \
	  --python-platform $(SERVE_PLATFORM_$(SERVER)) --index-url https://pypi.org/simple \
	  --no-header -o serve/$(SERVER).lock

clean: ## Remove run outputs and caches (keeps the virtualenv)
	rm -rf runs outputs multirun .cache .pytest_cache .ruff_cache .hypothesis .import_linter_cache
