# One venv for everything; every target is idempotent (a second run reuses the first's install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel on the build machines; on a GPU machine keep your own torch (set TORCH_SPEC= to skip).
TORCH_SPEC ?= torch==2.13.0
# transformers 4.x beside the venv's 5.x (pyproject allows both): tests/test_hf_export.py loads fakemerge's
# files with it. A --target folder without dependencies (torch, numpy, safetensors come from the venv): ~15 MB.
TRANSFORMERS4 := $(VENV)/transformers4
TRANSFORMERS4_SPEC := transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2 requests==2.34.2 \
	urllib3==2.8.0 charset_normalizer==3.5.3

.PHONY: setup demo test lint bench browser

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,faces]"
	touch $@

# Debian's Chromium for the browser test (Playwright drives it; its own browser download is not used).
# Without root or apt the browser test is skipped, saying why.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed: tests/test_serving_browser.py will be skipped"

demo: setup
	$(BIN)/fakemerge demo --out runs/demo

$(TRANSFORMERS4)/.installed: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps --target $(TRANSFORMERS4) $(TRANSFORMERS4_SPEC)
	touch $@

test: setup browser $(TRANSFORMERS4)/.installed
	HF_HUB_OFFLINE=1 FAKEMERGE_TRANSFORMERS4=$(abspath $(TRANSFORMERS4)) $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/lab_bench.py
