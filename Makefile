# The README's two commands: `make demo` (set up, then run the main job) and
# `make test` (set up, then run the test suite). .ci/run calls `make test`.
.PHONY: setup demo test lint bench
VENV ?= .venv

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/navsvc demo

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check navsvc planning phantoms tests

bench: setup
	$(VENV)/bin/navsvc bench registration
