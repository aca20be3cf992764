# tunnelscope: set-up, demo, tests and benchmarks. Every target depends on `setup`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test docs-test bench clean

setup: $(STAMP)
	@scripts/ensure-fashion-mnist.sh $(BIN)/python
	@scripts/ensure-chromium.sh

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	scripts/pip-install.sh $(BIN)/python --upgrade pip
	scripts/pip-install.sh $(BIN)/python -e ".[test]" -c constraints.txt
	@touch $(STAMP)

demo: setup
	$(BIN)/tunnelscope demo

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	TUNNELSCOPE_REQUIRE_EXTRAS=1 $(BIN)/python -m pytest -q

# every README and docs snippet, in order, in one fresh folder (about 15 minutes; CI runs it after test)
docs-test: setup
	TUNNELSCOPE_DOCS_TEST=1 TUNNELSCOPE_REQUIRE_EXTRAS=1 $(BIN)/python -m pytest -q tests/test_docs_in_order.py

bench: setup
	scripts/pip-install.sh $(BIN)/python -e ".[test,bench]" -c constraints.txt
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache
