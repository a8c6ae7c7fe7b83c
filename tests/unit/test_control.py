"""The control socket: a silent client is dropped, handler threads are capped."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.control import ControlError, ControlServer, request


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ControlServer, threading.Event]]:
    release = threading.Event()

    def submit(cmd: str, args: Any) -> Any:
        if cmd == "wait":
            release.wait(10)
        return {"cmd": cmd}

    srv = ControlServer(str(tmp_path / "c.sock"), submit, read_timeout=0.5,
                        max_handlers=2).start()
    yield srv, release
    release.set()
    srv.stop()


def silent(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(path)
    return s


def test_a_silent_client_is_dropped_after_the_read_timeout(server: Any) -> None:
    srv, _ = server
    s = silent(srv.path)
    t0 = time.monotonic()
    answer = json.loads(s.makefile().readline())
    assert answer == {"ok": False, "error": "no request within 0.5 s"}
    assert 0.4 < time.monotonic() - t0 < 2.5
    assert request(srv.path, "status") == {"cmd": "status"}


def test_connections_beyond_the_cap_are_refused_with_a_clear_error(server: Any) -> None:
    srv, release = server
    busy = []
    for _ in range(2):  # two requests in progress: every handler taken
        s = silent(srv.path)
        s.sendall(b'{"cmd": "wait"}\n')
        busy.append(s)
    time.sleep(0.2)
    with pytest.raises(ControlError, match="daemon busy: 2 control requests in progress"):
        request(srv.path, "status", timeout=3)
    release.set()
    for s in busy:
        assert json.loads(s.makefile().readline())["data"] == {"cmd": "wait"}
        s.close()
    time.sleep(0.1)
    assert request(srv.path, "status") == {"cmd": "status"}  # slots given back
