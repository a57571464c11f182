PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
URL    ?=

.PHONY: test lint bench venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy rawbackend

bench: venv
	$(BIN)/python -m benchmarks $(if $(URL),--url $(URL))

clean:
	rm -rf $(VENV) build dist benchmarks/results/2*
