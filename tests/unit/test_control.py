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


@pytest.fixture
def streaming(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """A server whose `rows` command streams N rows; `made` records rows made so far."""
    from controlplane.control import Stream

    made: list[int] = []

    def submit(cmd: str, args: Any) -> Any:
        n = int(args.get("n", 3))

        def rows() -> Iterator[dict[str, Any]]:
            for i in range(n):
                made.append(i)
                yield {"i": i}
                if args.get("fail") and i == 1:
                    raise ValueError("walk failed")

        return Stream({"head": True}, rows(), lambda: {"count": len(made)}, rows_key="rows")

    srv = ControlServer(str(tmp_path / "s.sock"), submit, read_timeout=2).start()
    yield srv.path, made
    srv.stop()


def test_a_stream_is_sent_row_by_row_to_who_asks_for_it(streaming: Any) -> None:
    from controlplane.control import request_stream

    path, made = streaming
    got = list(request_stream(path, "rows", {"n": 3}))
    assert got == [("head", {"head": True}), ("row", {"i": 0}), ("row", {"i": 1}),
                   ("row", {"i": 2}), ("end", {"count": 3})]


def test_a_stream_is_gathered_for_a_client_that_did_not_ask(streaming: Any) -> None:
    path, _ = streaming
    assert request(path, "rows", {"n": 2}) == {"head": True, "rows": [{"i": 0}, {"i": 1}],
                                               "count": 2}


def test_rows_are_made_as_the_client_reads_them(streaming: Any) -> None:
    """The server never runs ahead of the socket: a client that stops reading holds the
    walk (here: the server is far from having made all of a million rows)."""
    from controlplane.control import request_stream

    path, made = streaming
    it = request_stream(path, "rows", {"n": 1_000_000})
    assert next(it)[0] == "head" and next(it) == ("row", {"i": 0})
    time.sleep(0.3)
    assert len(made) < 200_000
    it.close()


def test_a_stream_that_fails_midway_says_so(streaming: Any) -> None:
    from controlplane.control import request_stream

    path, _ = streaming
    it = request_stream(path, "rows", {"n": 5, "fail": True})
    assert [k for k, _ in (next(it), next(it), next(it))] == ["head", "row", "row"]
    with pytest.raises(ControlError, match="walk failed"):
        next(it)
