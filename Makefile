# One venv for everything; every target is idempotent (a second run reuses the first's install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel on the build machines; on a GPU machine keep your own torch (set TORCH_SPEC= to skip).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,faces]"
	touch $@

demo: setup
	$(BIN)/fakemerge demo --out runs/demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/lab_bench.py
