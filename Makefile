# Gatekeeper — the two commands a new user needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test check lint fmt bench bench-peers chaos soak clean wrk

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

# The suite in three phases on two processes (pytest-xdist): the ordinary tests spread
# test by test, the slow ones (multi-process, kills, timing) file by file, then the tests
# marked serial alone.
PYTEST_FAST := $(BIN)/python -m pytest -q -n 2 -m "not slow"
PYTEST_SLOW := $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "slow and not serial"
PYTEST_SERIAL := $(BIN)/python -m pytest -q -m serial

test: $(DEVSTAMP)
	$(PYTEST_FAST)
	$(PYTEST_SLOW)
	$(PYTEST_SERIAL)

check: $(DEVSTAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(PYTEST_FAST)
	$(PYTEST_SLOW)
	$(PYTEST_SERIAL)

fmt: $(DEVSTAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# wrk drives bench and soak; Debian ships it (apt-get install wrk).
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  echo "make: installing wrk (Debian package)"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk; } \
	  || { echo "make: wrk is needed: apt-get install wrk"; exit 1; }

bench: $(DEVSTAMP) wrk
	$(BIN)/python -m bench.run

# Peer gateways that `make bench` measures beside Gatekeeper when they are installed
# (bench/peers.py). Kept out of .venv: LiteLLM in its own venv, Portkey in an npm prefix.
# Never litellm 1.82.7 / 1.82.8 (compromised releases). Portkey's @hono/node-server is held
# at 1.13.5, the version Portkey's own package-lock pins for 1.15.2: newer ones hand back a
# fetch response's immutable headers and every stream fails (Portkey-AI/gateway#1389, #1550).
PEERS := .bench-peers
LITELLM_VERSION := 1.106.2
PORTKEY_VERSION := 1.15.2
PORTKEY_HONO_NODE_SERVER := 1.13.5
LITELLM_VENV := $(PEERS)/litellm-venv
LITELLM_STAMP := $(LITELLM_VENV)/.installed-$(LITELLM_VERSION)
PORTKEY_STAMP := $(PEERS)/portkey/.installed-$(PORTKEY_VERSION)-$(PORTKEY_HONO_NODE_SERVER)

bench-peers: $(LITELLM_STAMP) $(PORTKEY_STAMP)

$(LITELLM_STAMP):
	rm -rf $(LITELLM_VENV)
	$(PY) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

$(PORTKEY_STAMP):
	rm -rf $(PEERS)/portkey
	mkdir -p $(PEERS)/portkey
	printf '%s\n' '{"private": true,' \
		' "dependencies": {"@portkey-ai/gateway": "$(PORTKEY_VERSION)"},' \
		' "overrides": {"@hono/node-server": "$(PORTKEY_HONO_NODE_SERVER)"}}' \
		> $(PEERS)/portkey/package.json
	cd $(PEERS)/portkey && npm install --no-audit --no-fund --ignore-scripts
	touch $@

chaos: $(DEVSTAMP)
	$(BIN)/python -m bench.chaos

soak: $(DEVSTAMP) wrk
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) $(PEERS) .gatekeeper .pytest_cache .mypy_cache .ruff_cache
