# ceed-vla — the two commands on a fresh machine are `make demo` and `make test`.
# Every target finds Python 3.12, creates or reuses .venv with uv from uv.lock, then runs.

SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PROFILE ?= quick
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export TOKENIZERS_PARALLELISM := false

.PHONY: help venv demo test lint gpu-check bench clean

help:
	@echo "make demo       record -> train -> distill -> evaluate on the embedded default (PROFILE=quick|full)"
	@echo "make test       the test suite (what CI runs)"
	@echo "make lint       ruff"
	@echo "make gpu-check  GPU tests, tiny decode, 0.5B-7B cost model, training throughput (CUDA; OUT=, CHECKPOINT=)"
	@echo "make bench      CPU benchmarks writing JSON under benchmarks/results/"

venv: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock scripts/setup_env.sh
	@bash scripts/setup_env.sh "$(VENV)"
	@touch $@

demo: venv
	$(VENV)/bin/ceed demo --profile $(PROFILE) --readme README.md

test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(VENV)/bin/ceed bench env
	$(VENV)/bin/ceed bench decode
	$(VENV)/bin/ceed bench train
	$(VENV)/bin/ceed bench bridge

# On a GPU machine with no registry access the project's venv cannot be built: use the machine's own
# Python with torch/triton/transformers and put this checkout on its path (scripts/gpu_check.sh).
# Results go to $(OUT) (default benchmarks/results/gpu); GPU_CHECK_ALLOW_CPU=1 runs it on tiny shapes
# without CUDA, to test the script.
gpu-check:
	@CHECKPOINT="$(CHECKPOINT)" OBSERVATIONS="$(OBSERVATIONS)" bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
