"""Lab life cycle and expected failures: clear messages, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import netns, topology
from lab.charon import Charon, CharonError
from lab.lab import Lab, LabError
from tests.conftest import require_lab_prerequisites, unique_lab_name

pytestmark = pytest.mark.lab

FLOWPIN = [sys.executable, "-m", "controlplane.cli"]


def leftovers(lab: Lab) -> list[str]:
    found = [f"netns {n}" for n in netns.listing(topology.ns_name(lab.name, ""))]
    if lab.state_dir.exists():
        found.append(f"state dir {lab.state_dir}")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            mounts = (entry / "mountinfo").read_text()
        except OSError:
            # Gone, going, or a zombie: which errno a dead process's /proc files give
            # depends on the kernel (6.1 answers EINVAL for a zombie's mountinfo). A
            # process whose state cannot be read holds no namespace or mount any more.
            continue
        if str(lab.state_dir).encode() in env or str(lab.state_dir) in mounts:
            found.append(f"process {entry.name}")
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if lab.name in line]
    return found


def cli(*args: str) -> subprocess.CompletedProcess:
    # A guard against a hang, not a measure: `lab up` compiles the data path (3 s here,
    # ~45 s a gateway in a VM without hardware virtualisation).
    return subprocess.run(FLOWPIN + list(args), capture_output=True, text=True, timeout=900)


def test_up_twice_down_leaves_nothing() -> None:
    require_lab_prerequisites()
    name = unique_lab_name("life")
    r = cli("lab", "up", "--name", name)
    try:
        assert r.returncode == 0, r.stderr
        assert "INSTALLED" in r.stdout
        again = cli("lab", "up", "--name", name)
        assert again.returncode == 1
        assert "already exists" in again.stderr and "Traceback" not in again.stderr
        st = cli("lab", "status", "--name", name, "--json")
        assert '"child_state": "INSTALLED"' in st.stdout
        pid = Lab(name).charon("bo-gw").pid()
        assert pid and os.path.exists(f"/proc/{pid}")
    finally:
        d = cli("lab", "down", "--name", name)
    assert d.returncode == 0, d.stderr
    assert leftovers(Lab(name)) == []


def test_down_after_crash_removes_leftovers() -> None:
    """A lab whose creator was SIGKILLed half-way is still removed completely."""
    require_lab_prerequisites()
    name = unique_lab_name("crash")
    lab = Lab(name)
    lab.up()
    # Simulate the crash: the record of the lab is gone, namespaces, charons, daemons and
    # pinned maps remain. (Not `down --all`: that would also remove labs of other runs.)
    (lab.state_dir / "lab.json").unlink()
    assert cli("lab", "down", "--name", name).returncode == 0
    assert leftovers(lab) == []
    from controlplane.datapath import PIN_ROOT

    assert not [p for p in PIN_ROOT.glob(f"lab-{name}-*")], "pinned maps left behind"


def test_flap_on_a_lab_that_is_down() -> None:
    r = cli("lab", "flap", "--name", "nosuchlab", "--how", "child", "--seconds", "1")
    assert r.returncode == 1
    assert "is not up" in r.stderr and "Traceback" not in r.stderr


def test_status_and_exec_on_a_lab_that_is_down() -> None:
    for args in (("lab", "status", "--name", "nosuchlab"),
                 ("lab", "exec", "--name", "nosuchlab", "bo-gw", "--", "true")):
        r = cli(*args)
        assert r.returncode == 1 and "is not up" in r.stderr, r.stderr


def test_bad_lab_name() -> None:
    r = cli("lab", "up", "--name", "Bad_Name!")
    assert r.returncode == 1 and "lab name" in r.stderr and "Traceback" not in r.stderr


def test_charon_failing_to_start_reports_its_log(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    require_lab_prerequisites()
    from lab import backend as backend_probe
    from lab import charon as charon_mod

    backend, _why = backend_probe.probe()  # the backend this kernel gives, as `lab up` does
    ns = f"fptest-charon-{os.getpid()}"
    netns.create(ns)
    try:
        # A VICI socket charon cannot create: it starts, logs why, and never opens it.
        bad = charon_mod.config_text(backend).replace(
            "unix:///run/charon.vici", "unix:///nonexistent/dir/charon.vici")
        monkeypatch.setattr(charon_mod, "config_text", lambda backend, options=None: bad)
        ch = Charon(ns, tmp_path, backend)
        with pytest.raises(CharonError) as err:
            ch.start(timeout=3)
        assert "did not open its VICI socket" in str(err.value)
        assert "vici" in str(err.value).lower()  # the log tail says what went wrong
    finally:
        netns.kill_all(ns)
        netns.remove(ns)


def test_missing_charon_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from lab import charon as charon_mod

    monkeypatch.setattr(charon_mod, "CHARON_CANDIDATES", ("/nonexistent/charon",))
    with pytest.raises(LabError, match="strongswan-charon"):
        Lab(unique_lab_name("miss")).up()


def test_peer_plain_recorded() -> None:
    """A one-sided lab: flowpin on bo-gw only, ho-gw a plain strongSwan (that flowpin on
    one side alone preserves a download through an outage: tests/e2e/test_story.py)."""
    require_lab_prerequisites()
    lab = Lab(unique_lab_name("plain"))
    try:
        lab.up(peer="plain")
        assert lab.status()["peer"] == "plain"
        assert lab.flowpin_gateways() == [topology.BO_GW]
        assert lab.daemon_pid("ho-gw") is None
    finally:
        lab.down()
