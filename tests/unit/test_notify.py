"""sd_notify through python3-systemd (libsystemd), to a socket the test binds: both forms
of NOTIFY_SOCKET systemd uses (a path; an abstract name, written with '@').

The daemon's own notifications (READY after attach and resync, RELOADING on SIGHUP) are
tested against a real daemon in tests/lab/test_systemd.py."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from controlplane.notify import ServiceNotifier


def receiver(address: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(5)
    return s


def fields(s: socket.socket) -> dict[str, str]:
    return dict(f.split("=", 1) for f in s.recv(4096).decode().splitlines())


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifications_reach_the_socket(tmp_path: Path, abstract: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"flowpin-test-{os.getpid()}"
    addr: str | bytes = b"\0" + name.encode() if abstract else str(tmp_path / "notify")
    with receiver(addr) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else str(addr))
        n = ServiceNotifier()
        assert n.enabled
        n.ready("charon connected (kernel-libipsec); 1 of 1 tunnels up; 3 flows, 0 held")
        assert fields(s) == {"READY": "1", "STATUS": "charon connected (kernel-libipsec); "
                             "1 of 1 tunnels up; 3 flows, 0 held"}
        n.reloading()
        f = fields(s)
        assert f["RELOADING"] == "1" and f["STATUS"] == "reloading the configuration"
        # CLOCK_MONOTONIC in microseconds, as systemd >= 253 compares it.
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 <= now - int(f["MONOTONIC_USEC"]) < 5_000_000
        n.reloaded("configuration x loaded")
        assert fields(s) == {"READY": "1", "STATUS": "configuration x loaded"}
        n.status("configuration x loaded")  # unchanged: not sent again
        n.status("charon unreachable")
        assert fields(s) == {"STATUS": "charon unreachable"}
        n.stopping()
        assert fields(s)["STOPPING"] == "1"


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for n in (ServiceNotifier(), ServiceNotifier(enabled=False)):
        assert not n.enabled and n.send("READY=1") is False


def test_watchdog_interval_is_half_of_what_systemd_set(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with receiver(str(tmp_path / "n")) as s:
        n = ServiceNotifier()
        assert n.watchdog_interval == 1.0
        n.tick(100.0)
        assert fields(s) == {"WATCHDOG": "1"}
        n.tick(100.5)  # not due yet
        n.tick(101.0)
        assert fields(s) == {"WATCHDOG": "1"}
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(4096)
    # The watchdog is another process's (WATCHDOG_PID): this one does not ping.
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert ServiceNotifier().watchdog_interval == 0
