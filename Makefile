# Cartridge developer workflow. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
BIN := .venv/bin
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DAGSTER_DISABLE_TELEMETRY := 1
# the bytecode cache is written by the first process that imports a module (scripts/bootstrap.sh)
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help install-dev format lint type-check test test-coverage demo bench soak services-up services-down docs clean

help:
	@echo "make demo          run the Dagster UI on the embedded demo (http://127.0.0.1:3000)"
	@echo "make test          lint, type-check and run every test (starts its own PostgreSQL)"
	@echo "make install-dev   create .venv and install from uv.lock"
	@echo "make format | lint | type-check | test-coverage | bench | soak | docs"

install-dev:
	@scripts/bootstrap.sh

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

type-check: install-dev
	$(BIN)/mypy cartridge_dagster

test:
	@scripts/test.sh

test-coverage:
	@scripts/test.sh --cov=cartridge_dagster --cov-report=term-missing --cov-report=html

demo:
	@scripts/demo.sh

bench:
	@scripts/bench.sh

soak: install-dev
	@scripts/soak.sh

docs: install-dev
	$(BIN)/cartridge docs config --output docs/configuration.md

services-up: install-dev
	$(BIN)/cartridge services up

services-down: install-dev
	$(BIN)/cartridge services down

clean:
	-$(BIN)/cartridge services down --quiet
	rm -rf .cartridge dbt_project/target dbt_project/logs .pytest_cache .mypy_cache .ruff_cache
