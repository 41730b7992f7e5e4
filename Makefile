# The two commands of the README: `make serve` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: serve test lint typecheck unit bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)  ## run the server on the embedded default (SQLite + local files + in-process worker)
	$(BIN)/seedbed serve $(ARGS)

test: lint typecheck unit  ## everything CI runs

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)  ## the API benchmark (figures go in docs/benchmarks.md)
	$(BIN)/python bench/api_bench.py

fuzz: $(STAMP)  ## the long schemathesis run (make test runs a short one); SEEDBED_FUZZ_EXAMPLES=N
	SEEDBED_FUZZ_EXAMPLES=$${SEEDBED_FUZZ_EXAMPLES:-500} $(BIN)/pytest tests/integration/test_fuzz.py -p no:cacheprovider -q --timeout=3600

clean:
	rm -rf $(VENV) seedbed-data .pytest_cache .mypy_cache .ruff_cache
