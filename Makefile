# The README's two commands: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real data and weights are used when a local mirror sits beside the checkout (as in CI).
SAS_KIT_MIRROR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
SAS_KIT_WEIGHTS_DIR ?= $(if $(wildcard ../shared/weights),$(abspath ../shared/weights),)
ifneq ($(SAS_KIT_MIRROR),)
export SAS_KIT_MIRROR
endif
ifneq ($(SAS_KIT_WEIGHTS_DIR),)
export SAS_KIT_WEIGHTS_DIR
endif
export MPLBACKEND ?= Agg

.PHONY: demo test test-browser venv lab clean-notebooks

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,lab]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/sas-kit demo

test: venv
	$(BIN)/python -m pytest -q tests notebooks/01_datasets.ipynb --nbval-lax

# Only the real-browser widget tests (JupyterLab + headless Chromium); `make test` runs them too.
test-browser: venv
	$(BIN)/python -m pytest -q tests/test_browser.py

lab: venv
	$(BIN)/jupyter lab notebooks/

clean-notebooks: venv
	$(BIN)/python tools/notebooks.py --strip notebooks/*.ipynb
