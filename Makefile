# One command per workflow. The README names `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY_DIRS := $(wildcard src tests bench scripts)

.PHONY: install demo test lint typecheck unit protos bench services clean

$(BIN)/gatehouse: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/gatehouse

demo: install
	$(BIN)/gatehouse demo

services:
	bash scripts/ensure-services.sh

lint: install
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: install
	$(BIN)/mypy

unit: install services
	$(BIN)/pytest

# The whole suite: lint, types, and every test (PostgreSQL ones included).
test: lint typecheck unit

protos: install
	$(BIN)/python scripts/gen_protos.py

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .pytest_cache .ruff_cache
