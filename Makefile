# Fleetlab: `make up` runs the whole system on this machine, `make test` runs the test suite.
# Both bootstrap what they need: uv (from PyPI with pip, when it is not on PATH) and .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TOOLS := .tools

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(TOOLS)/bin/uv
endif

.PHONY: up test lint fmt bootstrap asyncapi vendor clean screenshots

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv

$(VENV)/.synced: uv.lock pyproject.toml $(wildcard */pyproject.toml */*/pyproject.toml) | $(UV)
	$(UV) sync --frozen --all-packages --python 3.11
	@touch $@

bootstrap: $(VENV)/.synced

up: bootstrap
	$(VENV)/bin/fleetlab up

test: bootstrap
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }  # browser tests
	$(VENV)/bin/pytest

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: bootstrap
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Regenerate the checked-in AsyncAPI document after changing an event model.
asyncapi: bootstrap
	$(VENV)/bin/python -m fleetlab_common.events.asyncapi > docs/asyncapi.json

# Refresh the dashboard's vendored front-end files from the versions pinned in package.json.
# Refresh the screenshots in docs/screenshots (the browser tests take them).
screenshots: bootstrap
	FLEETLAB_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(VENV)/bin/pytest tests/browser -q

vendor:
	cd services/api/frontend && npm ci --no-audit --no-fund && node vendor.mjs

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
