# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Each creates .venv and installs jgrad into it on first use; nothing else needs doing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jgrad-installed

.PHONY: demo test test-slow bench lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jgrad needs Python >= 3.11; run make with PYTHON=python3.11 (or newer)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jgrad demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -q -m slow

# Benchmarks (torch comparison only if installed: $(PY) -m pip install -e '.[bench]').
bench: $(STAMP)
	$(PY) scripts/bench_rnn.py $(ARGS)

lint: $(STAMP)
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check jgrad tests scripts && $(VENV)/bin/ruff format --check jgrad tests scripts

clean:
	rm -rf $(VENV) runs build *.egg-info
