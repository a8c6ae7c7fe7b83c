"""The Vagrantfile validates, reads the lab's addressing, and writes nothing to do so."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from lab import deploy
from tests.deploy.conftest import VAGRANT_DIR, require_tool


def _validate(tmp: Path, *args: str, path_prefix: str = "", **env: str) -> \
        subprocess.CompletedProcess:
    vagrant = require_tool("vagrant", "vagrant")
    e = dict(os.environ, VAGRANT_DOTFILE_PATH=str(tmp / "dot"), VAGRANT_HOME=str(tmp / "home"),
             VAGRANT_CHECKPOINT_DISABLE="1", **env)
    if path_prefix:
        e["PATH"] = f"{path_prefix}:{e['PATH']}"
    return subprocess.run([vagrant, "validate", *args], cwd=VAGRANT_DIR, env=e,
                          capture_output=True, text=True, timeout=120)


def test_validate_without_provider(tmp_path: Path) -> None:
    # No provider is installed on the build machine: --ignore-provider validates everything
    # but the provider blocks (which the next test covers for VirtualBox).
    r = _validate(tmp_path, "--ignore-provider")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
    # The gateways' key: made once, private, the same on every later run.
    psk = tmp_path / "dot" / "flowpin.psk"
    assert psk.stat().st_mode & 0o777 == 0o600 and len(psk.read_text().strip()) == 48
    first = psk.read_text()
    assert _validate(tmp_path, "--ignore-provider").returncode == 0
    assert psk.read_text() == first


def test_validate_virtualbox_provider_block(tmp_path: Path) -> None:
    # Vagrant's VirtualBox provider is built in; it is usable once `VBoxManage --version`
    # answers. A shim that only answers that lets `validate` check the VirtualBox block and
    # the network options (internal networks) for real. The libvirt block needs the
    # vagrant-libvirt plugin, which is not installed here.
    shim = tmp_path / "shim"
    shim.mkdir()
    vbm = shim / "VBoxManage"
    vbm.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 7.0.20r163906; exit 0; }\n"
                   "echo \"VBoxManage shim: $*\" >&2; exit 1\n")
    vbm.chmod(0o755)
    r = _validate(tmp_path, path_prefix=str(shim), VAGRANT_DEFAULT_PROVIDER="virtualbox")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout


def test_bad_override_is_refused(tmp_path: Path) -> None:
    r = _validate(tmp_path, "--ignore-provider", FLOWPIN_GW_MEMORY="lots")
    assert r.returncode != 0
    assert "lots" in r.stdout + r.stderr


def test_topology_json_is_the_labs() -> None:
    # The Vagrantfile reads vagrant/topology.json; it must be what the lab's topology says.
    on_disk = json.loads((VAGRANT_DIR / "topology.json").read_text())
    assert on_disk == deploy.topology_json(), (
        "vagrant/topology.json is stale: python -m lab.deploy topology > "
        "vagrant/topology.json")
    nodes = on_disk["nodes"]
    assert set(nodes) == {"bo-client", "bo-gw", "ho-gw", "ho-server"}
    assert [n["ipv4"] for n in nodes["bo-gw"]["nics"]] == ["10.1.0.1", "192.0.2.1"]
    assert [n["net"] for n in nodes["ho-gw"]["nics"]] == ["wan", "ho-lan"]
