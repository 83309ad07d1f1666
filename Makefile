# Two entry points on a fresh machine with only python3:  `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-slow check bench lint typecheck docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(BIN)/.installed

# The main job: an MLP on the digits, trained with hand-written backprop.
run: $(BIN)/.installed
	$(BIN)/fbp train --data digits --hidden 256,128 --dropout 0.2 --epochs 40 --plot digits_curves.png

check: $(BIN)/.installed
	$(BIN)/fbp check

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 -q

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff check fbp tests examples benchmarks

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# The documentation site, built strictly (a warning fails it) into site/.
$(VENV)/.docs-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache build site *.egg-info
