# Two commands for a new user: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint unit integration e2e clean bench-bridge bench-media bench-request-cost

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pingpull serve

test: $(STAMP) lint
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench-bridge: $(STAMP)
	$(BIN)/python -m bench.bridge

bench-media: $(STAMP)
	$(BIN)/python -m bench.media

bench-request-cost: $(STAMP)
	$(BIN)/python -m bench.request_cost

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
