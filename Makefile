# flowpin: the two commands of the README's Quick start, and the targets behind them.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test lint unit clean-lab fresh-check test-xfrm
setup:
	@VENV=$(VENV) scripts/setup.sh

demo: setup
	$(VENV)/bin/flowpin demo

test: setup lint
	$(PY) -m pytest -v tests

lint: setup
	$(VENV)/bin/ruff check controlplane vici_glue lab bench tests bpf

unit: setup
	$(PY) -m pytest -v -m "not lab" tests

clean-lab: setup
	$(VENV)/bin/flowpin lab down --all

# The Quick start on a Debian 12 debootstrapped from nothing (committed state; see docs/testing.md).
fresh-check:
	@scripts/fresh-check.sh

# The suite on kernel IPsec (strongSwan's kernel-netlink/XFRM backend): in a VM booting
# Debian's own kernel, because this host's kernel has no ESP. Installs what it needs (QEMU,
# the kernel and its headers, virtme-ng in .venv-vm) only here. Choose what runs with
# XFRM_TESTS, e.g. make test-xfrm XFRM_TESTS="tests/e2e -k story". See docs/kernel-ipsec.md.
XFRM_TESTS ?= tests/e2e tests/lab/test_reclassify.py tests/lab/test_lifecycle.py tests/lab/test_capture_witness.py
test-xfrm: setup
	@scripts/setup-xfrm.sh
	$(PY) tests/xfrm/run_in_vm.py $(XFRM_TESTS)
