# One target per task. `make run` and `make test` are the two commands of the README.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test lint typecheck pytest install install-test system-packages bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# An editable install writes no bytecode; compile it as a packaged install would (a client
# call compiles its modules from source otherwise: about 15 ms, under PYTHONDONTWRITEBYTECODE always).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/python -m compileall -q loadmgrd loadmgrctl
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m compileall -q loadmgrd loadmgrctl
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## Run the daemon in the foreground on the built-in defaults (state under ~/.local/state/loadmgr).
run: install
	$(BIN)/loadmgrd

lint: install-test
	$(BIN)/ruff check loadmgrd loadmgrctl tests bench
	$(BIN)/ruff format --check loadmgrd loadmgrctl tests bench

typecheck: install-test
	$(BIN)/mypy

# pytest exits 5 when it collected nothing: that is a failure here too.
pytest: install-test
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	 if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

## The Debian packages the tests need (PostgreSQL server binaries, psql, setpriv, logrotate), when missing.
system-packages:
	@bash .ci/system-packages

## Lint, type-check and run the whole test suite.
test: system-packages lint typecheck pytest

## Run every benchmark (a table, and JSON in bench/results/); supervisor is the P2 baseline.
bench: install
	$(BIN)/pip install -q supervisor
	$(BIN)/python -m compileall -q loadmgrd loadmgrctl
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
