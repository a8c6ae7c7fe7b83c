"""The systemd units provisioning installs pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.deploy.conftest import VAGRANT_DIR, require_tool

# Where the Debian package installs flowpin; provisioning links the VMs' venv there.
EXEC = "/usr/sbin/flowpin"


def _verify(unit_dir: Path, *units: str) -> subprocess.CompletedProcess:
    """systemd-analyze verify; it also opens each Documentation= man page, so the project's
    own (installed by the package and by provisioning, not on this machine) is on MANPATH."""
    tool = require_tool("systemd-analyze", "systemd")
    man = unit_dir / "man"
    (man / "man8").mkdir(parents=True, exist_ok=True)
    (man / "man8/flowpin.8").write_bytes((VAGRANT_DIR.parent / "docs/man/flowpin.8").read_bytes())
    return subprocess.run([tool, "verify", *(str(unit_dir / u) for u in units)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MANPATH": f"{man}:"})


def test_flowpin_service_verifies(tmp_path: Path) -> None:
    # `verify` checks that ExecStart's binary exists; on the build machine flowpin is not in
    # /usr/sbin (the package and provisioning put it there). So verify a copy that differs
    # in that one path only, pointing at an executable that exists here (make deb-check
    # verifies the installed unit as it is).
    text = (VAGRANT_DIR / "flowpin.service").read_text()
    assert f"ExecStart={EXEC} daemon --config /etc/flowpin/flowpin.toml" in text
    (tmp_path / "flowpin.service").write_text(text.replace(EXEC, "/bin/true"))
    (tmp_path / "flowpin-net.service").write_text(
        (VAGRANT_DIR / "flowpin-net.service").read_text())
    r = _verify(tmp_path, "flowpin.service", "flowpin-net.service")
    assert r.returncode == 0, r.stdout + r.stderr
    # Nothing was said about our units (warnings included).
    assert "flowpin" not in r.stderr, r.stderr


def test_flowpin_service_contract() -> None:
    text = (VAGRANT_DIR / "flowpin.service").read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert "strongswan.service" in keys["After"] and "strongswan.service" in keys["Wants"]
    assert keys["Restart"] == "on-failure"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # READY=1 after attach and charon's state (controlplane/notify.py); a start that compiles
    # for a minute on a slow VM is not cut short.
    assert keys["Type"] == "notify"
    assert int(keys["TimeoutStartSec"]) >= 120
    # A broken file stops the start before anything is loaded, naming file, line and key.
    pre = re.findall(r"^ExecStartPre=(.*)$", text, re.M)
    assert pre[0] == f"{EXEC} daemon --check-config --config /etc/flowpin/flowpin.toml"
    caps = set(keys["CapabilityBoundingSet"].split())
    assert {"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON"} <= caps
    # Hardening that would break the data path is absent.
    for bad in ("MemoryDenyWriteExecute", "SystemCallFilter", "ProtectKernelTunables",
                "ProtectKernelModules", "PrivateNetwork", "PrivateDevices"):
        assert bad not in keys, bad
    # provisioning installs flowpin where the unit runs it from
    prov = (VAGRANT_DIR / "provision.sh").read_text()
    assert f'ln -sfn "$PREFIX/.venv/bin/flowpin" {EXEC}' in prov
    # and the Debian package installs this very file
    link = VAGRANT_DIR.parent / "debian" / "flowpin.service"
    assert link.is_symlink() and link.resolve() == (VAGRANT_DIR / "flowpin.service").resolve()


def test_documentation_is_what_both_installs_put_in_place() -> None:
    """Documentation= names the man page, which the Debian package (debian/flowpin.manpages)
    and the VMs' provisioning both install: `systemctl help flowpin` opens it."""
    text = (VAGRANT_DIR / "flowpin.service").read_text()
    docs = re.search(r"^Documentation=(.*)$", text, re.M).group(1).split()
    assert docs == ["man:flowpin(8)"]
    repo = VAGRANT_DIR.parent
    assert (repo / "docs/man/flowpin.8").is_file()
    assert "docs/man/flowpin.8" in (repo / "debian/flowpin.manpages").read_text().split()
    assert 'docs/man/flowpin.8" /usr/local/share/man/man8/flowpin.8' in \
        (VAGRANT_DIR / "provision.sh").read_text()


def test_check_config_accepts_what_provisioning_renders(tmp_path: Path) -> None:
    """The unit's ExecStartPre passes on the flowpin.toml provisioning writes."""
    import sys

    from lab import deploy

    deploy.render("bo-gw", tmp_path, psk="unused", lan_if="enp0s8")
    cfg = tmp_path / deploy.FLOWPIN_FILE
    r = subprocess.run([sys.executable, "-m", "controlplane.cli", "daemon", "--check-config",
                        "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"configuration {cfg} is valid" in r.stdout
