# askonce: `make demo` runs the embedded demo, `make test` runs the tests.
# Both create .venv and install the pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# sekmet-fhir, the independent FHIR server the integration tests talk to, lives in
# its own virtualenv so that its pins never constrain ours.
SEKMET_VENV := .venv-sekmet
SEKMET_VERSION := 0.1.1
SEKMET_STAMP := $(SEKMET_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint format lock bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "askonce needs Python 3.11 or newer"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

$(SEKMET_STAMP):
	$(PYTHON) -m venv $(SEKMET_VENV)
	$(SEKMET_VENV)/bin/python -m pip install --quiet sekmet-fhir==$(SEKMET_VERSION)
	touch $@

install: $(STAMP) $(SEKMET_STAMP)

demo: $(STAMP)
	$(BIN)/askonce demo

test: install
	ASKONCE_SEKMET=$(abspath $(SEKMET_VENV))/bin/sekmet $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-pin the whole dependency tree after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^askonce' > requirements.lock

clean:
	rm -rf $(VENV) $(SEKMET_VENV) .mypy_cache .pytest_cache .ruff_cache
