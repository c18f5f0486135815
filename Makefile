# raypipe — the two commands: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

# torch first and alone, so that no other package's dependency pulls a CUDA build from the index.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/raypipe demo --out demo-out

# The architecture contracts (ARCHITECTURE.md; pyproject.toml [tool.importlinter]) and lint, then the tests.
lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check raypipe tests jobs
	$(BIN)/ruff format --check raypipe tests jobs

test: lint
	$(BIN)/python -m pytest -q --durations=15 tests

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: setup
	$(BIN)/raypipe bench decode --out bench-out/decode.json
	$(BIN)/raypipe bench relabel --out bench-out/relabel.json
	$(BIN)/raypipe bench flow-memory --out bench-out/flow_memory.json
	$(BIN)/raypipe bench serve --out bench-out/serve.json

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache
