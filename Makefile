# The two commands a new machine needs:  `make up` runs the pipeline, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: up test lint bench install clean

$(BIN)/intake311: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

install: $(BIN)/intake311

up: install          ## web form + Open311 API + every stage + embedded broker, in one process
	$(BIN)/intake311 up

test: install        ## lint, type-check, then every test (integration tests start their own broker)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: install       ## throughput figures, printed (not asserted)
	$(BIN)/python bench/pipeline_bench.py
	$(BIN)/python bench/e2e_bench.py
	$(BIN)/python bench/classifier_eval.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
