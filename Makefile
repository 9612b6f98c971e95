# Each target sets up .venv on first use, so a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

.PHONY: install test sweep ablate lint
install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

sweep: $(STAMP)
	$(PY) -m semclip_bench sweep --shots 1,5,10,20

ablate: $(STAMP)
	$(PY) -m semclip_bench ablate

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
