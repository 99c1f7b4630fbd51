# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates/updates .venv idempotently (re-installs only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.digitnet-installed
# Real MNIST beside the checkout (CI, developers) unless the caller says otherwise.
DIGITNET_DATA ?= $(if $(wildcard ../shared/mnist),$(abspath ../shared/mnist),)
export DIGITNET_DATA

.PHONY: demo test test-fast lint venv browser clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

venv: $(STAMP)

# Debian's chromium for the browser test (never a downloaded browser build).
browser:
	@command -v /usr/bin/chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: /usr/bin/chromium missing; install Debian's chromium to run the browser test"; fi; }

demo: $(STAMP)
	$(BIN)/python -m digitnet demo

# The full suite (what CI runs): lint, then every test, real-data training and the browser included.
test: lint browser
	$(BIN)/python -m pytest -q --durations=15

# The quick lane: no test marked slow (real training) or browser; under a minute on 2 cores.
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow and not browser" --durations=15

# Style, formatting, layer contracts (import-linter) and types (mypy).
lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
