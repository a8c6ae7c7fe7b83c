"""The control client's failures are ControlError, which callers waiting for a daemon
expect: a daemon that accepts but is too busy to answer (as one is while it compiles and
attaches its programs at start) must not surface as a raw socket timeout."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from controlplane.control import ControlError, request


def test_a_daemon_that_accepts_but_does_not_answer_is_a_control_error(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    done = threading.Event()

    def accept_and_stay_silent() -> None:
        conn, _ = server.accept()
        done.wait(5)
        conn.close()

    t = threading.Thread(target=accept_and_stay_silent, daemon=True)
    t.start()
    try:
        with pytest.raises(ControlError, match="did not answer 'status' within 0.2 s"):
            request(path, "status", timeout=0.2)
    finally:
        done.set()
        t.join()
        server.close()


def test_no_daemon_is_a_control_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no flowpin daemon"):
        request(str(tmp_path / "none.sock"), "status", timeout=0.2)
