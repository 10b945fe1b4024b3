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

# Three test processes, each a module at a time (its module-scoped pipeline stays in one process);
# every process starts its own embedded broker. TEST_PROCESSES=0 runs them all in this one.
TEST_PROCESSES ?= 3

test: install        ## lint, type-check, then every test (integration tests start their own broker)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadscope

bench: install       ## throughput figures, printed (not asserted)
	$(BIN)/python bench/pipeline_bench.py
	$(BIN)/python bench/e2e_bench.py
	$(BIN)/python bench/classifier_eval.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
