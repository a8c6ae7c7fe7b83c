"""The daemon speaks systemd's notify protocol as a Type=notify unit needs, against a real
charon: NOTIFY_SOCKET points at a datagram socket this test binds (as systemd does).

READY=1 must mean "the data path is attached and judges traffic by what charon has
installed": the moment it arrives, the test asks the daemon and tc (an independent
witness) what is true."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from controlplane.notify import STATUS_INTERVAL
from lab import hooks, topology
from lab.flap import flap
from lab.lab import Lab

pytestmark = pytest.mark.lab

GW = "bo-gw"


class Notifications:
    """What the daemon sends, in order, each with what was true when it arrived."""

    def __init__(self, lab: Lab, path: Path) -> None:
        self.lab = lab
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            msg: dict[str, Any] = dict(f.split("=", 1) for f in data.decode().splitlines())
            if msg.get("READY") == "1" and not any("READY" in m for m in self.got):
                # The first READY: what the data path holds right now.
                msg["seen_ctx"] = self.lab.ask(GW, "show-vpn-context")
                msg["seen_hooks"] = hooks.hook_progs(self.lab.ns(GW), topology.LAN_IF)
            self.got.append(msg)

    def wait(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in list(self.got):
                if pred(m):
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s; got {self.got}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_ready_reload_status_watchdog_stop(lab: Lab, tmp_path: Path) -> None:
    lab.kill_daemon(GW, signal.SIGTERM)
    note = Notifications(lab, tmp_path / "notify")
    cfg = lab.daemon_config(GW)
    good = cfg.read_text()
    try:
        lab.start_daemon(GW, env={"NOTIFY_SOCKET": str(tmp_path / "notify"),
                                  "WATCHDOG_USEC": "1000000"})
        ready = note.wait(lambda m: m.get("READY") == "1", 30, "READY=1")
        # Not before: the first thing said is READY, once attached and charon's listing
        # applied -- the tunnel is UP in the data path itself, its filter on the LAN.
        # (Watchdog pings may come first: systemd counts them from the start.)
        assert [m for m in note.got if "READY" in m or "STATUS" in m][0] is ready
        (t,) = ready["seen_ctx"]["tunnels"]
        assert (t["tunnel"], t["state"], t["datapath_state"]) == ("site/lan", "UP", "UP")
        assert ready["seen_hooks"] == {"ingress": ["fp_outbound"], "egress": ["fp_inbound"]}
        backend = lab.meta()["backend"]
        assert ready["STATUS"].startswith(f"charon connected ({backend}); 1 of 1 tunnels up; ")

        # The watchdog: pinged from the loop at half WATCHDOG_USEC.
        note.wait(lambda m: m.get("WATCHDOG") == "1", 5, "WATCHDOG=1")

        # A reload (SIGHUP, as ExecReload): RELOADING=1 with its MONOTONIC_USEC, then READY.
        pid = lab.daemon_pid(GW)
        assert pid
        n = len(note.got)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        subprocess.run(["kill", "-HUP", str(pid)], check=True)
        rel = note.wait(lambda m: note.got.index(m) >= n and m.get("RELOADING") == "1", 10,
                        "RELOADING=1")
        assert int(rel["MONOTONIC_USEC"]) >= before
        back = note.wait(lambda m: note.got.index(m) > note.got.index(rel)
                         and m.get("READY") == "1", 10, "READY=1 after the reload")
        assert back["STATUS"] == f"configuration {cfg} loaded"

        # A broken file: still READY (the old configuration runs), and the status says why.
        cfg.write_text(good + "\n[sysopt]\nbogus = 1\n")
        n = len(note.got)
        subprocess.run(["kill", "-HUP", str(pid)], check=True)
        rel = note.wait(lambda m: note.got.index(m) >= n and m.get("RELOADING") == "1", 10,
                        "RELOADING=1")
        back = note.wait(lambda m: note.got.index(m) > note.got.index(rel)
                         and m.get("READY") == "1", 10, "READY=1 after a refused reload")
        assert back["STATUS"].startswith("configuration rejected, running configuration "
                                         "unchanged: ")
        cfg.write_text(good)

        # STATUS= follows the tunnel: down during an outage, up again after it.
        n = len(note.got)
        flap(lab, "child", STATUS_INTERVAL + 3)
        note.wait(lambda m: note.got.index(m) >= n and "0 of 1 tunnels up"
                  in m.get("STATUS", ""), STATUS_INTERVAL + 5, "STATUS with the tunnel down")
        note.wait(lambda m: note.got.index(m) >= n and "1 of 1 tunnels up"
                  in m.get("STATUS", "") and "READY" not in m, 2 * STATUS_INTERVAL + 5,
                  "STATUS with the tunnel up again")

        lab.kill_daemon(GW, signal.SIGTERM)
        note.wait(lambda m: m.get("STOPPING") == "1", 10, "STOPPING=1")
    finally:
        cfg.write_text(good)
        note.close()
        if lab.daemon_pid(GW) is None:
            lab.start_daemon(GW)
        lab.wait_daemon_sees_up(GW, timeout=60)
