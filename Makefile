# Gatekeeper — the two commands a new user needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test check lint fmt bench chaos soak clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP) $@

run: $(STAMP)
	$(BIN)/gatekeeper serve

test: $(DEVSTAMP)
	$(BIN)/python -m pytest -q

check: $(DEVSTAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

fmt: $(DEVSTAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(DEVSTAMP)
	$(BIN)/python -m bench.run

chaos: $(DEVSTAMP)
	$(BIN)/python -m bench.chaos

soak: $(DEVSTAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .gatekeeper .pytest_cache .mypy_cache .ruff_cache
