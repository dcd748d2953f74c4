# Crunch: `make run` starts everything, `make test` runs the whole suite.
# Both create the virtualenv on first use and reinstall when requirements change.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN_STAMP  := $(VENV)/.run-deps
TEST_STAMP := $(VENV)/.test-deps

.PHONY: run test bench lint worker web clean offline-images

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

$(TEST_STAMP): $(RUN_STAMP) requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

run: $(RUN_STAMP)
	$(PY) -m infra.run

test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(PY) -m bench

lint: $(TEST_STAMP)
	$(PY) -m ruff check .

# Pieces of `make run`, for running workers on more hosts against a shared REDIS_URL.
worker: $(RUN_STAMP)
	$(PY) worker.py

web: $(RUN_STAMP)
	$(PY) -m gunicorn -c python:rest.gunicorn_conf rest.wsgi:app

# Stand-ins for the base images (python:3.11-slim, valkey/valkey:8, nginx) built from Debian's
# packages, for machines with a Docker engine but no registry; see infra/images/build.sh.
offline-images:
	infra/images/build.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
