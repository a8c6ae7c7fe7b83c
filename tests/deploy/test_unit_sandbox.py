"""flowpin runs inside the unit's sandbox: only the capabilities of its
CapabilityBoundingSet, no new privileges (NoNewPrivileges), on the rendered flowpin.toml;
its ExecStartPre (--check-config) passes there, and it tells systemd READY (Type=notify)
over a NOTIFY_SOCKET the test binds -- here with charon unreachable, which still is a
known state (every tunnel held DOWN), not a start that never ends.

There is no systemd on the build machine to run the unit itself; `setpriv` applies the same
bounding set and no_new_privs to the daemon, which must then compile and attach its data
path to the LAN NIC of a namespace and answer on its control socket.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import deploy
from tests.deploy.conftest import VAGRANT_DIR

pytestmark = pytest.mark.bpf


def _bounding_set() -> str:
    text = (VAGRANT_DIR / "flowpin.service").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    return "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)


def test_daemon_runs_with_the_units_capabilities(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("root is needed (namespaces, bpf)", pytrace=False)
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.fail("setpriv is missing (Debian package util-linux)", pytrace=False)
    from controlplane.control import ControlError, request
    from controlplane.datapath import purge_pins

    tag = f"fpcap{os.getpid() % 100000}"
    sock = str(tmp_path / "flowpin.sock")
    deploy.render("bo-gw", tmp_path, psk="unused", lan_if="lan0",
                  vici_socket=str(tmp_path / "no-charon.vici"), instance=tag,
                  control_socket=sock)
    subprocess.run(["ip", "netns", "add", tag], check=True)
    proc = None
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        subprocess.run(["ip", "-n", tag, "link", "add", "lan0", "type", "veth", "peer", "name",
                        "lan0p"], check=True)
        subprocess.run(["ip", "-n", tag, "link", "set", "lan0", "up"], check=True)
        sandbox = ["ip", "netns", "exec", tag, setpriv, "--bounding-set", _bounding_set(),
                   "--no-new-privs", sys.executable, "-m", "controlplane.cli", "daemon",
                   "--config", str(tmp_path / deploy.FLOWPIN_FILE)]
        pre = subprocess.run([*sandbox, "--check-config"], capture_output=True, text=True,
                             timeout=60)
        assert pre.returncode == 0, pre.stderr
        notify.bind(str(tmp_path / "notify"))
        log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 -- closed in finally
        proc = subprocess.Popen(sandbox, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env=dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify")))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            try:
                request(sock, "status", timeout=2)
                break
            except ControlError:
                time.sleep(0.2)
        else:
            pytest.fail("daemon did not answer:\n" + (tmp_path / "daemon.log").read_text())
        text = (tmp_path / "daemon.log").read_text()
        assert "attached to lan0" in text and "preserve-vpn-flows on" in text, text
        status = Path(f"/proc/{proc.pid}/status").read_text()
        bnd = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        assert bnd & (1 << 39) and bnd & (1 << 12)  # CAP_BPF, CAP_NET_ADMIN
        assert not bnd & (1 << 1)  # no CAP_DAC_OVERRIDE: the sandbox is in force
        assert "NoNewPrivs:\t1" in status
        notify.settimeout(20)
        msg = dict(f.split("=", 1) for f in notify.recv(4096).decode().splitlines())
        assert msg["READY"] == "1", msg
        assert msg["STATUS"].startswith("charon unreachable: all tunnels held DOWN; "), msg
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        notify.close()
        subprocess.run(["ip", "netns", "del", tag], check=False)
        purge_pins(tag)
        shutil.rmtree(Path("/run/flowpin") / tag, ignore_errors=True)
