# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
#
# Two stacks ("legs"), each in its own virtual environment:
#   newest  .venv         the newest Python found (3.13, else 3.12, else 3.11) with the newest
#                         releases of every dependency, plus the optional stacks that need
#                         Python >= 3.12 (icechunk, virtualizarr); `make demo` and `make test`
#   oldest  .venv-oldest  Python 3.11 with the oldest releases the package declares, pinned in
#                         .ci/constraints-oldest.txt; `make test-oldest`
# Interpreters are found on PATH or under pyenv (scripts/find-python); override with
# `make test PYTHON=/path/to/python3.13`.
PYTHON ?= $(shell scripts/find-python 3.13 3.12 3.11)
PYTHON_OLDEST ?= $(shell scripts/find-python 3.11)
VENV := .venv
BIN := $(VENV)/bin
VENV_OLDEST := .venv-oldest
STAMP := $(VENV)/.installed
STAMP_OLDEST := $(VENV_OLDEST)/.installed
# Tests run in random order (pytest-randomly, from the test extra), and the seed is printed at
# the top: rerun one order with `make test PYTEST_ARGS=--randomly-seed=N`.
PYTEST_ARGS ?=

.PHONY: demo test test-newest test-oldest lint typecheck docs bench-quick figures stress clean

# The stamp records the interpreter: a .venv made by another Python is rebuilt, not reused.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python 3.11+ found (set PYTHON=...)" >&2; exit 1; }
	@echo "newest leg: $(PYTHON) ($$($(PYTHON) -V 2>&1))"
	@if [ ! -x $(BIN)/python ] || [ "$$(cat $(STAMP) 2>/dev/null)" != "$(PYTHON)" ]; then \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --upgrade -e ".[test]"
	echo "$(PYTHON)" > $(STAMP)

$(STAMP_OLDEST): pyproject.toml .ci/constraints-oldest.txt
	@test -n "$(PYTHON_OLDEST)" || { echo "no Python 3.11 found (set PYTHON_OLDEST=...)" >&2; exit 1; }
	@echo "oldest leg: $(PYTHON_OLDEST) ($$($(PYTHON_OLDEST) -V 2>&1))"
	rm -rf $(VENV_OLDEST) && $(PYTHON_OLDEST) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/python -m pip install -q --only-binary :all: \
		-c .ci/constraints-oldest.txt -e ".[test,torch]"
	echo "$(PYTHON_OLDEST)" > $(STAMP_OLDEST)

demo: $(STAMP)
	$(BIN)/xarray-zarrwrite demo

test: test-newest

test-newest: $(STAMP)
	@$(BIN)/python scripts/versions.py
	$(MAKE) lint
	$(MAKE) typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) docs
	$(MAKE) bench-quick

test-oldest: $(STAMP_OLDEST)
	@$(VENV_OLDEST)/bin/python scripts/versions.py
	$(VENV_OLDEST)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check xarray_zarrwrite tests asv_bench
	$(BIN)/ruff format --check xarray_zarrwrite tests asv_bench

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

bench-quick: $(STAMP)
	cd asv_bench && ../$(BIN)/asv machine --yes --machine ci >/dev/null
	cd asv_bench && ../$(BIN)/asv run --python=same --quick --dry-run --show-stderr --machine ci

# Benchmark charts for the docs (small comparison runs, a few minutes): docs/_static/*.png
figures: $(STAMP)
	$(BIN)/python asv_bench/figures.py --out docs/_static

stress: $(STAMP)
	$(BIN)/python -m pytest --run-slow tests/reliability

clean:
	rm -rf $(VENV) $(VENV_OLDEST) docs/_build asv_bench/.asv .pytest_cache .hypothesis .mypy_cache
