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
	$(BIN)/pip install -q -e ".[dev,serve,eval,deepspeed]"
	touch $(STAMP)

# System packages: Java for the COCO caption metrics (PTB tokenizer, METEOR) and Debian's chromium for the
# web page's real-browser test (never `playwright install`, which downloads its own browser). Best effort:
# without root or a package mirror, the tests that need them skip and say why.
system:
	@missing=""; command -v java >/dev/null 2>&1 || missing="$$missing default-jre-headless"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null 2>&1 \
	  || echo "warning: could not install$$missing; the tests that need them will skip"; \
	fi

install: $(STAMP) system

lint: install
	$(BIN)/ruff check src tests bench

test: install lint
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/pytest -x --timeout 900

# Train the demo model from scratch on ShapesWorld (~15 min on 2 CPU cores), evaluate every task, write
# runs/demo/report.md and keep the model in runs/demo/model. DEMO_ARGS="--quick" for a 2-minute first look.
demo: install
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m groundlm demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
