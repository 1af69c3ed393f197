# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs bench-quick stress clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xarray-zarrwrite demo

test: $(STAMP)
	$(MAKE) lint
	$(BIN)/python -m pytest
	$(MAKE) docs
	$(MAKE) bench-quick

lint: $(STAMP)
	$(BIN)/ruff check xarray_zarrwrite tests asv_bench
	$(BIN)/ruff format --check xarray_zarrwrite tests asv_bench

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

bench-quick: $(STAMP)
	cd asv_bench && ../$(BIN)/asv machine --yes --machine ci >/dev/null
	cd asv_bench && ../$(BIN)/asv run --python=same --quick --dry-run --show-stderr --machine ci

stress: $(STAMP)
	$(BIN)/python -m pytest --run-slow tests/reliability

clean:
	rm -rf $(VENV) docs/_build asv_bench/.asv .pytest_cache .hypothesis
