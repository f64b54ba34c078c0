# tenant-release: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# checkov's own pins conflict with apache-airflow's, so it gets a virtualenv of its own.
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: install checkov run stop test lint test-fast lock lock-checkov clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## checkov (the template security scan that tests/unit/test_template_security.py runs), pinned.
checkov: $(CHECKOV_STAMP)

$(CHECKOV_STAMP): requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

## Run a release end to end: moto server + bootstrap + Airflow (SQLite, LocalExecutor) + trigger + summary.
run: $(STAMP)
	$(BIN)/python scripts/local_stack.py up $(if $(TAG),--tag $(TAG),)

## Stop everything `make run` started.
stop:
	@test -x $(BIN)/python && $(BIN)/python scripts/local_stack.py down || true

## The whole test suite (what CI runs).
test: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

## Only the tests that need neither Airflow processes nor PostgreSQL/Redis.
test-fast: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/python -m pytest -m "not slow and not scaleout" tests/unit tests/aws

lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^tenant-release' > requirements.lock.tmp && \
	  { head -3 requirements.txt; cat requirements.lock.tmp; } > requirements.txt.new && \
	  rm requirements.lock.tmp && mv requirements.txt.new requirements.txt

lock-checkov:
	$(CHECKOV_VENV)/bin/pip freeze > requirements-checkov.lock.tmp && \
	  { head -3 requirements-checkov.txt; cat requirements-checkov.lock.tmp; } > requirements-checkov.txt.new && \
	  rm requirements-checkov.lock.tmp && mv requirements-checkov.txt.new requirements-checkov.txt

clean: stop
	rm -rf .local .pytest_cache .ruff_cache
