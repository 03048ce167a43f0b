# Two commands: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean docs chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on this machine's disk, so pip never pulls CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,semantic,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	CURATE=$(abspath $(BIN))/curate examples/quickstart/demo.sh

test: $(STAMP) lint chromium
	$(BIN)/pytest

# Debian's Chromium, for the test that opens `curate report` headless (no-op when installed).
chromium:
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

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
