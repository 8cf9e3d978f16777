# The front door: `make run` and `make test` work on a fresh machine with Python, pip and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench chaos install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/clickflow up --demo

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	bash scripts/ensure-kcat.sh
	$(BIN)/pytest -q -m "not chaos"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/run_all.py

chaos: $(STAMP)
	$(BIN)/pytest -q -m chaos

clean:
	rm -rf .clickflow test-output
