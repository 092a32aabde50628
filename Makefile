# Two commands on a fresh machine (Python 3.11, pip, make):
#   make demo   installs into .venv and runs the demo on loopback
#   make test   installs into .venv and runs the whole test suite
#   make demo-fleet   the demo as a fleet on a local PostgreSQL
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml $(wildcard gateway/core/_native*.c gateway/core/_native*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo

# The demo as a fleet: a local PostgreSQL under var/demo/postgres, a control
# plane and two data-plane replicas, each its own process (README: The fleet).
.PHONY: demo-fleet
demo-fleet: $(STAMP) postgres-server
	$(BIN)/gateway demo --replicas 2

# pytest exits 5 when it collected no test: that is a failure here too, but
# reported by name rather than as a bare make error.
# The tests start a throwaway PostgreSQL server (tests/postgres.py) from the
# machine's own binaries: Debian's package, installed here when it is missing.
.PHONY: postgres-server
postgres-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "the tests need PostgreSQL's server: sudo apt-get install postgresql" >&2; exit 1; fi; }

# The suite runs in one worker process per core (pytest-xdist), at most
# four; PYTEST_WORKERS=0 runs it in this process, one test after another.
PYTEST_WORKERS ?= auto --maxprocesses 4

test: $(STAMP) postgres-server
	@$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)"; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# docs/configuration.md and docs/schema/*.json, generated from the schemas in
# gateway/config/ (tests/config/test_reference.py fails when they differ).
.PHONY: config-docs
config-docs: $(STAMP)
	$(BIN)/python -m gateway.config docs

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache build gateway/core/_native.*.so

# The benchmark (bench/README.md): gateway vs nginx vs a naive aiohttp
# proxy vs the bare upstream, on loopback; installs nginx, uvloop and py-spy.
.PHONY: bench
bench: $(STAMP)
	bash bench/run.sh $(BENCH_ARGS)

# The fleet (bench/README.md): --workers 1 vs 2, revocation propagation.
.PHONY: bench-fleet
bench-fleet: $(STAMP) postgres-server
	$(BIN)/python bench/fleet.py $(BENCH_ARGS)

# Mutation testing (docs/mutation.md), not part of `make test`: mutmut, from
# PyPI in a virtualenv of its own, mutates the pure decision modules and the
# break-glass policy ([tool.mutmut] in pyproject.toml) and runs the fast tests
# that cover them. Narrow it with MUTANTS, e.g.
#   make mutate MUTANTS='gateway.core.denials*' MUTATE_JOBS=1
MUTMUT_VERSION ?= 3.8.1
MUTATE_JOBS    ?= 2
MUTANTS        ?=
MVENV          := .venv-mutate
MSTAMP         := $(MVENV)/.installed-$(MUTMUT_VERSION)

$(MSTAMP): pyproject.toml $(wildcard gateway/core/_native*.c gateway/core/_native*.h)
	$(PYTHON) -m venv $(MVENV)
	$(MVENV)/bin/python -m pip install --quiet --upgrade pip
	$(MVENV)/bin/python -m pip install --quiet -e '.[test]' 'mutmut==$(MUTMUT_VERSION)'
	touch $(MSTAMP)

.PHONY: mutate
mutate: $(MSTAMP)
	$(MVENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS); \
	$(MVENV)/bin/mutmut results
