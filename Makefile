# flowpin: the two commands of the README's Quick start, and the targets behind them.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test lint unit clean-lab fresh-check test-xfrm deb deb-check
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

# The gateway's Debian package (the product only) in out/deb/; installs debhelper and
# dh-python here if missing (the build machine's tools, not the gateway's). See docs/install.md.
deb:
	@scripts/build-deb.sh out/deb

# The package installed, upgraded, removed and purged on a debootstrapped Debian 12, its
# daemon run against a real charon (committed state, as fresh-check; 3-5 min, docs/testing.md).
deb-check:
	@scripts/deb-check.sh

# The suite on kernel IPsec (strongSwan's kernel-netlink/XFRM backend): in a VM booting
# Debian's own kernel, because this host's kernel has no ESP. Installs what it needs (QEMU,
# the kernel and its headers, virtme-ng in .venv-vm) only here. Choose what runs with
# XFRM_TESTS, e.g. make test-xfrm XFRM_TESTS="tests/e2e -k story". See docs/kernel-ipsec.md.
XFRM_TESTS ?= tests/e2e tests/lab/test_reclassify.py tests/lab/test_lifecycle.py tests/lab/test_capture_witness.py
test-xfrm: setup
	@scripts/setup-xfrm.sh
	$(PY) tests/xfrm/run_in_vm.py $(XFRM_TESTS)
