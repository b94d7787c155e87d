# Quick start: `make demo`, then `make test`. Both create .venv and install medft when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medft-installed
# torch is installed first, so that the torch requirement of medft and MONAI never pulls a
# multi-GB CUDA build onto a machine without a GPU: from PyTorch's CPU index when the machine has no
# NVIDIA driver (no nvidia-smi) and the index answers; otherwise pip picks the build (a local wheel,
# or PyPI's, which on Linux is the CUDA build: what a GPU machine wants).
TORCH ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo test lint docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1 && $(BIN)/python -c "import urllib.request; urllib.request.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=10)" 2>/dev/null; then \
		$(BIN)/python -m pip install --quiet "$(TORCH)" --index-url "$(TORCH_CPU_INDEX)"; \
	else \
		echo "note: installing $(TORCH) as pip picks it ($(TORCH_CPU_INDEX) not used: a GPU driver is present or the index does not answer)"; \
		$(BIN)/python -m pip install --quiet "$(TORCH)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/medft demo

test: setup lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

lint: setup
	$(BIN)/ruff check medft apps tests benchmarks

docs: setup
	$(BIN)/python -m medft.reference > docs/reference.md

clean:
	rm -rf $(VENV) runs .pytest_cache
