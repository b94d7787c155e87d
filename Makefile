# Quick start: `make demo`, then `make test`. Both create .venv and install medft when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medft-installed
# The CPU build of torch is installed first, so that the torch requirement of medft and MONAI
# never pulls a multi-GB CUDA build onto a machine without a GPU.
TORCH ?= torch==2.13.0

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/medft demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
