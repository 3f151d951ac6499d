# Two commands do everything on a fresh machine: `make test` and `make demo`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system test lint demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the local CPU build, so no dependency pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,serve,eval]"
	touch $(STAMP)

# System packages: Java for the COCO caption metrics (PTB tokenizer, METEOR). Best effort: without root or a
# package mirror the metrics that need Java report themselves unavailable and their tests skip.
system:
	@command -v java >/dev/null 2>&1 || { \
	  echo "installing a Java runtime (caption metrics)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless) >/dev/null 2>&1 \
	  || echo "warning: could not install Java; caption metrics will be reported unavailable"; }

install: $(STAMP) system

lint: install
	$(BIN)/ruff check src tests bench

test: install lint
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/pytest -x --timeout 900

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
