# flowpin: the two commands of the README's Quick start, and the targets behind them.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test lint unit clean-lab fresh-check
setup:
	@VENV=$(VENV) scripts/setup.sh

demo: setup
	$(VENV)/bin/flowpin demo

test: setup lint
	$(PY) -m pytest -v tests

lint: setup
	$(VENV)/bin/ruff check controlplane vici_glue tests bpf

unit: setup
	$(PY) -m pytest -v -m "not lab" tests

clean-lab: setup
	$(VENV)/bin/flowpin lab down --all

# The Quick start on a Debian 12 debootstrapped from nothing (committed state; see docs/testing.md).
fresh-check:
	@scripts/fresh-check.sh
