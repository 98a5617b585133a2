# Quick start:  make demo   (set up, then run the main job on the default data)
#               make test   (set up, then run the test suite)
#
# TORCH pins the PyTorch build installed *before* the package, so pip never pulls a multi-GB CUDA wheel by
# accident. On a CUDA machine: make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#
# Installs are pinned: set-up installs with constraints.txt (every package the tests last passed with, torch and
# its CUDA libraries aside: TORCH picks those). `make lock` refreshes the pins from the newest allowed versions;
# `make test-latest` runs the suite against the newest allowed versions in .venv-latest (not in CI), so an upgrade
# that breaks something is found on purpose. `make lint` (ruff), `make imports` (the layer contract) and
# `make typecheck` (mypy) run in CI too. `make test-fast` skips the tests marked slow or gpu (about 2 minutes).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRAS)
CONSTRAINTS := constraints.txt
# what the lock leaves to TORCH: torch itself and the CUDA libraries of its build; and this package
UNPINNED := ^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|pruneopt)==

.PHONY: setup data demo demo-reid test test-fast test-latest lint imports typecheck lock bench clean

setup: $(STAMP) data

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

# refresh the pins: a throw-away venv with the newest versions pyproject.toml allows, frozen into constraints.txt
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q $(TORCH)
	.venv-lock/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	{ echo "# pip constraints: the versions the test suite last passed with (make lock refreshes them; torch and"; \
	  echo "# its CUDA libraries are left to the Makefile's TORCH). Written by make lock on $$(date -u +%F)."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -Ev '$(UNPINNED)' | LC_ALL=C sort -f; \
	} > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-lock
	@echo "constraints.txt refreshed; run make test (the stamp depends on it) and commit it when the suite passes"

# the suite against the newest allowed versions, in its own venv (not in CI)
test-latest:
	test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q $(TORCH)
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]"
	@./scripts/install-data.sh
	PATH="$(abspath .venv-latest/bin):$$PATH" .venv-latest/bin/python -m pytest -q

data:
	@./scripts/install-data.sh

# the main job: a quick pruning-space search of resnet20 on Fashion-MNIST at half the FLOPs, then the winner
# exported to ONNX, served, and answering a query (scripts/demo.sh)
demo: setup
	BIN=$(BIN) ./scripts/demo.sh runs/demo

# the re-ID chain on synthetic people: synth -> train -> search --task reid -> export -> serve -> import -> eval,
# the service's rank-1/mAP printed next to reidserve eval's (scripts/demo_reid.sh)
demo-reid: setup
	BIN=$(BIN) ./scripts/demo_reid.sh runs/demo-reid

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

# the suite without the tests marked slow (the slowest, by measured duration) or gpu: about 2 minutes on 2 cores
test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m "not slow and not gpu"

lint: setup
	$(BIN)/ruff check .

# the layer contract of README's Layout section (import-linter; contracts in pyproject.toml)
imports: setup
	$(BIN)/lint-imports

# mypy over every package (the files of [tool.mypy] in pyproject.toml; strict for the core, export and cpp_ext)
typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/sampling.py
	$(BIN)/python bench/complexity_check.py

clean:
	rm -rf $(VENV) .venv-latest .venv-lock build *.egg-info .pytest_cache
