# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates/updates .venv idempotently (re-installs only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.digitnet-installed
# Real MNIST beside the checkout (CI, developers) unless the caller says otherwise.
DIGITNET_DATA ?= $(if $(wildcard ../shared/mnist),$(abspath ../shared/mnist),)
export DIGITNET_DATA

.PHONY: demo test test-fast lint venv system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

venv: $(STAMP)

# Debian's packages the tests use: chromium for the browser test (never a downloaded browser
# build), tesseract-ocr as the peer in `bench read`, and the DejaVu/Liberation/Noto fonts the
# glyphs that are not digits are drawn with.
FONTS := fonts-dejavu-core fonts-liberation fonts-noto-core
SYSTEM_PACKAGES ?= chromium tesseract-ocr $(FONTS)
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: missing Debian packages:$$missing (install them to run every test)"; fi; fi

demo: $(STAMP)
	@$(MAKE) --no-print-directory system-deps SYSTEM_PACKAGES="$(FONTS)"
	$(BIN)/python -m digitnet demo

# The full suite (what CI runs): lint, then every test, real-data training and the browser included.
test: lint system-deps
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
