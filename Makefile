# One command each: `make quickstart` (set-up + main job), `make test` (set-up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup quickstart test test-fast clean

# Creates the virtual environment when missing. torch is pinned to 2.13.0: on our machines pip
# takes the local CPU wheel; elsewhere PyPI serves the build for your platform.
$(BIN)/lrpo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23" "setuptools>=68,<81" wheel
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(BIN)/lrpo

setup: $(BIN)/lrpo

quickstart: setup
	$(BIN)/lrpo quickstart

test: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

# the quick loop while developing: everything but the tests marked slow
test-fast: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
