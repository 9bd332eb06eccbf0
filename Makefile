# The two commands of the README:
#   make demo   set up .venv (idempotent) and run the main job on the embedded default
#   make test   set up .venv (idempotent) and run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast clean-venv

setup: $(STAMP)

# Reinstalls only when a requirements file changes; torch goes first with its exact pin.
$(STAMP): requirements.txt requirements-wheels.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-wheels.txt
	touch $(STAMP)

demo: setup
	$(PY) demo.py

test: setup
	$(PY) -m pytest -q --durations=15 tests  # the 15 slowest printed: where the 10 minutes go

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

clean-venv:
	rm -rf $(VENV)
