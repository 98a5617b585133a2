# Quick start:  make demo   (set up, then run the main job on the default data)
#               make test   (set up, then run the test suite)
#
# TORCH pins the PyTorch build installed *before* the package, so pip never pulls a multi-GB CUDA wheel by
# accident. On a CUDA machine: make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup data demo test lint bench clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

data:
	@./scripts/install-data.sh

# the main job: a quick pruning-space search of resnet20 on Fashion-MNIST at half the FLOPs, then the winner
# exported to ONNX, served, and answering a query (scripts/demo.sh)
demo: setup
	BIN=$(BIN) ./scripts/demo.sh runs/demo

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/sampling.py
	$(BIN)/python bench/complexity_check.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
