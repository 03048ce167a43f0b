# Two commands: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	CURATE=$(abspath $(BIN))/curate examples/quickstart/demo.sh

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Regenerate the files made from the code (tests check they are current).
docs: $(STAMP)
	$(BIN)/curate schema --output schemas/spec.schema.json
	$(BIN)/curate ops --markdown > docs/reference.md

clean:
	rm -rf $(VENV) examples/quickstart/runs examples/quickstart/out
