# The two commands: `make demo` and `make test`. Both create .venv and install what is missing.
# The newest python3.X >= 3.11 on PATH (3.13, 3.12, 3.11: Debian 13 and Ubuntu 24.04 ship 3.13 /
# 3.12; the suite passes on each, see README), else python3 if >= 3.11; PY=... overrides
PY      ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
             command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
             && echo $$p && break; done)
ifeq ($(strip $(PY)),)
$(error no python3.11 or newer on PATH; install one or pass PY=/path/to/python3.X)
endif
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP:= $(VENV)/.installed-dev
DEMO_OUT ?= runs/demo

.PHONY: demo test test-fast lint install install-dev clean bench bench-full

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $(STAMP)

$(DEVSTAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(DEVSTAMP)

install: $(STAMP)
install-dev: $(DEVSTAMP)

# The aligncap_pipeline flow in Prefect's embedded mode on the built-in corpus, with the
# CPU-sized settings in flows/demo.yaml. A second run reuses the cached stages. The embedded
# Prefect server gets 300 s to start (its 20 s default is too short on a busy 2-core machine).
demo: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=$${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-300} \
		$(BIN)/aligncap run --out $(DEMO_OUT) --params flows/demo.yaml

test: $(DEVSTAMP)
	$(BIN)/python -m pytest -q -ra

# The fast lane for development: no servers, no browser, nothing slow (a few minutes).
# CI runs `make test`, i.e. everything.
test-fast: $(DEVSTAMP)
	$(BIN)/python -m pytest -q -ra -m "not integration and not slow"

lint: $(DEVSTAMP)
	$(BIN)/ruff check aligncap_core aligncap_ops tasks flows tests bench docs/experiments

# Speed and memory figures as JSON, one line per script (docs/PERFORMANCE.md); < 10 min.
# bench-full adds the issue's 500/1000/2000-clip scaling and a timed `make demo` (~30 min).
bench: $(STAMP)
	nice -n 5 $(BIN)/python bench/run_all.py

bench-full: $(STAMP)
	nice -n 5 $(BIN)/python bench/run_all.py --full

clean:
	rm -rf runs .pytest_cache
