# tenant-release: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run stop test lint test-fast lock clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## Run a release end to end: moto server + bootstrap + Airflow (SQLite, LocalExecutor) + trigger + summary.
run: $(STAMP)
	$(BIN)/python scripts/local_stack.py up $(if $(TAG),--tag $(TAG),)

## Stop everything `make run` started.
stop:
	@test -x $(BIN)/python && $(BIN)/python scripts/local_stack.py down || true

## The whole test suite (what CI runs).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

## Only the tests that need neither Airflow processes nor PostgreSQL/Redis.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not scaleout" tests/unit tests/aws

lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^tenant-release' > requirements.lock.tmp && \
	  { head -3 requirements.txt; cat requirements.lock.tmp; } > requirements.txt.new && \
	  rm requirements.lock.tmp && mv requirements.txt.new requirements.txt

clean: stop
	rm -rf .local .pytest_cache .ruff_cache
