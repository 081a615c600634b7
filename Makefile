# dployr-agent: `make run` serves on the embedded defaults, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	@echo "dployr-agent: serving on http://127.0.0.1:7879 (state in ./.dployr-state)"
	@echo "On first start the admin's password is printed below and saved in .dployr-state/initial-admin-password."
	@echo "Log in:  curl -s http://127.0.0.1:7879/v1/auth/login -H 'Content-Type: application/json' \\"
	@echo "           -d '{\"email\": \"admin@localhost\", \"password\": \"<the password>\"}'"
	$(BIN)/dployr-agent serve

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.test-installed
	$(BIN)/ruff check agent tests bench
	$(BIN)/mypy

bench: $(VENV)/.test-installed
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
