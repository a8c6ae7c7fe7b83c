# flowpin: the two commands of the README's Quick start, and the targets behind them.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test lint unit test-bpf test-clsact clean-lab fresh-check test-xfrm deb deb-check
setup:
	@VENV=$(VENV) scripts/setup.sh

demo: setup
	$(VENV)/bin/flowpin demo

test: setup lint
	$(PY) -m pytest -v tests

lint: setup
	$(VENV)/bin/ruff check controlplane vici_glue lab bench tests bpf

# The tiers (docs/testing.md): unit needs no root and starts no charon, bpf needs root but
# starts no charon, lab starts charons. `make unit` run as root (CI) first becomes nobody, so
# that a unit test that needs root fails here instead of passing unnoticed; the checkout and
# the venv must be readable by all (they are, with the usual umask). git refuses a repository
# owned by another user unless told it is safe: nobody only reads root's checkout.
ROOT := $(filter 0,$(shell id -u))
NOBODY := setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
	env HOME=/tmp PYTHONDONTWRITEBYTECODE=1 \
	GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0=$(CURDIR)
UNIT_AS := $(if $(ROOT),$(NOBODY))
unit: $(if $(ROOT),setup)
	@$(UNIT_AS) $(PY) -c 'import controlplane, pytest' 2>/dev/null || { \
		echo "unit: cannot run $(PY)$(if $(ROOT), as nobody): is the checkout readable by all?"; \
		exit 1; }
	$(UNIT_AS) $(PY) -m pytest -p no:cacheprovider -m "not lab and not bpf" tests

test-bpf: setup
	$(PY) -m pytest -v -m bpf tests

# The data path, lab and e2e tiers on clsact filters, the attach mode `auto` does not choose
# on a kernel with tcx (`make test` runs them on tcx here): both kinds of TC hook stay green.
# FLOWPIN_TEST_ATTACH is what the lab and the fixtures ask of every data path and daemon.
# Choose what runs with CLSACT_TESTS, e.g. make test-clsact CLSACT_TESTS=tests/datapath.
CLSACT_TESTS ?= tests/datapath tests/lab tests/e2e
test-clsact: setup
	FLOWPIN_TEST_ATTACH=clsact $(PY) -m pytest -v $(CLSACT_TESTS)

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
