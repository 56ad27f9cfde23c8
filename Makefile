# The two commands of the README:
#   make run    set everything up, then run the main job (the study's classifier comparison)
#   make test   set everything up, lint, then run the whole test suite (slow and real-data tests included)
# ARGS passes options to the job, e.g.  make run ARGS="--data=path/to/intel"
VENV ?= .venv
ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist: one worker per core (each test file stays on one worker, sharing its fixtures)
TEST_WORKERS ?= auto

.PHONY: setup run test test-fast bench explore clean

setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/accelerate launch --config_file accelerate_config.yaml recipes/compare_classifiers.py $(ARGS)

test:
	bash scripts/setup.sh --browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/toolkit benchmark $(ARGS)

explore: setup
	$(VENV)/bin/toolkit data explore $(ARGS)

clean:
	rm -rf runs wandb .pytest_cache bench-results.json bench-results-wandb
