# `make run` and `make test` set themselves up: they create .venv and install tsae on first use.
PYTHON ?= python3
VENV ?= .venv
PARAMS ?= params/default.yaml
# The torch build to install; e.g. TORCH_SPEC="torch --index-url <your CUDA wheel index>" on a GPU box.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.tsae-installed

.PHONY: run test lint setup clean-runs notebooks

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## Run the default experiment end to end (harvest, train, evaluate, cluster, plot).
run: $(STAMP)
	$(BIN)/tsae run $(PARAMS)

## Run the test suite (unit tests and the notebooks on tiny params); no network needed.
test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check tsae_core tests notebooks

## Generate .ipynb files beside the percent scripts, for Jupyter.
notebooks: $(STAMP)
	$(BIN)/jupytext --to ipynb notebooks/*.py

clean-runs:
	rm -rf runs
