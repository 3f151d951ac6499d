# Two commands do everything on a fresh machine: `make test` and `make demo`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the local CPU build, so no dependency pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,serve]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check src tests bench

test: install lint
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/pytest -x --timeout 600

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
