# One command each: `make quickstart` (set-up + main job), `make test` (set-up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup quickstart test test-fast clean gpu-wheels

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

# wheels the device machine lacks (it reaches no registry), carried there with the working tree:
# run `bench/gpu_check.py` there as its docstring says, with carry [".whl"]
gpu-wheels: setup
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0

clean:
	rm -rf $(VENV) runs .pytest_cache
