# Two commands for a fresh machine (see README.md):
#   make run    set up a virtualenv and run the example stack in the foreground
#   make test   set up a virtualenv and run lint, types and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STACK := example/docker/supervisord
# The e2e tests mostly wait on real processes: three workers, one test file each at a time
# (a file's tests share fixtures and ports), cut the suite from about 19 to about 8 minutes.
# JOBS=0 runs everything in one process, as before.
JOBS ?= 3
XDIST := $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadfile)

.PHONY: run test lint unit e2e bench bench-docker venv system-deps clean image

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,example]'
	touch $@

run: venv
	scripts/system-deps.sh php
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python example/run.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

system-deps:
	scripts/system-deps.sh

test: system-deps lint
	$(BIN)/pytest $(XDIST) --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest --ignore=tests/e2e $(PYTEST_ARGS)

e2e: venv
	$(BIN)/pytest $(XDIST) tests/e2e $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/protocol.py
	$(BIN)/python bench/memmon.py
	$(BIN)/python bench/crashmail.py
	$(BIN)/python bench/crashmail_logs.py
	$(BIN)/python bench/exporter.py
	$(BIN)/python bench/listeners_memory.py
	$(BIN)/python bench/health.py
	$(BIN)/python bench/auth.py

# the example image's size and start/stop times (as root: builds on the private dockerd)
bench-docker: venv
	$(BIN)/python bench/docker.py --runs 2

# the example image, on a private dockerd with stand-in bases (as root; docs/docker.md)
image:
	scripts/docker-local.sh build

clean:
	rm -rf $(VENV) $(STACK)/run .pytest_cache .mypy_cache .ruff_cache
