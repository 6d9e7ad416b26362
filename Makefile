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

.PHONY: demo test test-browser venv lab clean-notebooks site

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,lab]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

# The course site's extra (Sphinx + myst-nb + sphinx-book-theme; docs/site.md), for `make site` and tests/test_site.py.
$(VENV)/.site-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[site]"
	touch $@

demo: venv
	$(BIN)/sas-kit demo

test: venv $(VENV)/.site-installed
	$(BIN)/python -m pytest -q tests notebooks/01_datasets.ipynb --nbval-lax

# Only the real-browser widget tests (JupyterLab + headless Chromium); `make test` runs them too.
test-browser: venv
	$(BIN)/python -m pytest -q tests/test_browser.py

lab: venv
	$(BIN)/jupyter lab notebooks/

clean-notebooks: venv
	$(BIN)/python tools/notebooks.py --strip notebooks/*.ipynb

# The course site: every chapter executed with the quick profile, rendered to _build/site/html (docs/site.md).
site: venv $(VENV)/.site-installed
	$(BIN)/python book/build.py --out _build/site
