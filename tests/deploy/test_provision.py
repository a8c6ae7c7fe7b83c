"""`vagrant/provision.sh ROLE --dry-run` prints every action and executes none.

The script runs with a PATH holding only harmless read-only tools and shims that record a
call and fail: a dry run that tried to install, write or start anything would fail here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import VAGRANT_DIR, dry_env, shim_path

SCRIPT = VAGRANT_DIR / "provision.sh"


def _dry(tmp: Path, *args: str, psk: str = "") -> tuple[subprocess.CompletedProcess, Path]:
    bindir, log = shim_path(tmp)
    env = dry_env(bindir)
    # The file preview renders with the project's Python (pure: it only prints).
    env["FLOWPIN_DRY_PYTHON"] = sys.executable
    if psk:
        env["FLOWPIN_PSK"] = psk
    r = subprocess.run(["/bin/bash", str(SCRIPT), *args, "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=60)
    return r, log


def _ok(r: subprocess.CompletedProcess, log: Path) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert not log.exists(), f"dry run executed: {log.read_text()}"
    return r.stdout


@pytest.mark.parametrize("gw", ["bo-gw", "ho-gw"])
def test_gateway(tmp_path: Path, gw: str) -> None:
    out = _ok(*_dry(tmp_path, gw, psk="not-shown-psk"))
    # One charon: the ipsec starter is masked before any package could start it.
    assert out.index("+ systemctl mask strongswan-starter.service") < out.index("apt-get install")
    assert "linux-headers-" in out and "charon-systemd strongswan-swanctl" in out
    # The project's own setup, on a copy in /opt/flowpin, without the test-only packages.
    assert "+ env FLOWPIN_DEV_PKGS= VENV=/opt/flowpin/.venv /opt/flowpin/scripts/setup.sh" in out
    assert f"+ /opt/flowpin/.venv/bin/python -m lab.deploy render --node {gw} " \
           "--out /etc" in out
    for path in ("/etc/swanctl/conf.d/flowpin-site.conf", "/etc/strongswan.d/flowpin.conf",
                 "/etc/flowpin/flowpin.toml", "/etc/sysctl.d/90-flowpin.conf",
                 "/etc/flowpin/net.sh"):
        assert f"+ write {path}" in out, path
    assert "kernel-libipsec {\n            load = no" in out
    assert "preserve-vpn-flows = true" in out
    assert "not-shown-psk" not in out  # the key is never printed
    assert "+ sysctl -q -p /etc/sysctl.d/90-flowpin.conf" in out
    assert "+ install -m 0644 /opt/flowpin/vagrant/flowpin.service " \
           "/etc/systemd/system/flowpin.service" in out
    assert "+ systemctl enable flowpin-net.service strongswan.service flowpin.service" in out
    assert out.index("restart strongswan.service") < out.index("restart flowpin.service")


@pytest.mark.parametrize("gw", ["bo-gw", "ho-gw"])
def test_gateway_kernel_stage(tmp_path: Path, gw: str) -> None:
    out = _ok(*_dry(tmp_path, gw, "--stage", "kernel"))
    assert "+ apt-get install -y -q --no-install-recommends linux-headers-" in out
    assert "linux-image-amd64 linux-headers-amd64" in out
    assert "charon" not in out


@pytest.mark.parametrize("host", ["bo-client", "ho-server"])
def test_host(tmp_path: Path, host: str) -> None:
    out = _ok(*_dry(tmp_path, host))
    assert "+ apt-get install -y -q --no-install-recommends python3 curl" in out
    assert f"+ python3 -m lab.deploy render --node {host} --out /etc" in out
    assert "+ write /etc/flowpin/net.sh" in out
    assert "+ systemctl enable flowpin-net.service" in out
    for absent in ("charon", "swanctl", "flowpin.service", "setup.sh", "flowpin.toml"):
        assert absent not in out, absent


def test_bad_role(tmp_path: Path) -> None:
    r, log = _dry(tmp_path, "ho-router")
    assert r.returncode == 2 and "usage" in r.stderr
    assert not log.exists()

