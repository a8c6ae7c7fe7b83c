"""The control socket between the CLI and the daemon: one JSON request, one JSON answer.

A Unix stream socket, mode 0600 and owned by root: only root may look at or change the
gateway's flows. Request ``{"cmd": "show-conn", "args": {...}}``; answer
``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``.

A command whose answer is a :class:`Stream` (``show conn``) is streamed to a client that
asks with ``"stream": true``: ``{"ok": true, "stream": true, "data": HEAD}``, then one
``{"row": ...}`` line per row as it is made, then ``{"end": TAIL}`` (or ``{"error": ...}``
if it failed midway). Other clients get it gathered into one answer as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_REQUEST = 64 * 1024
# A client gets this long to send its request line (and to take each chunk of the answer):
# one that connects and stays silent must not keep a handler thread forever.
READ_TIMEOUT = 5.0
# Handler threads at once; a connection beyond them is answered "busy" and closed, so that
# a stuck or hostile client cannot grow the daemon's threads without bound.
MAX_HANDLERS = 16


class ControlError(RuntimeError):
    """The daemon could not be reached or refused the request."""


@dataclass
class Stream:
    """An answer sent as it is made: ``head``, then each of ``rows``, then ``tail()``
    (called once the rows are spent)."""

    head: dict[str, Any]
    rows: Iterator[dict[str, Any]]
    tail: Callable[[], dict[str, Any]]
    rows_key: str = "connections"  # where the rows go in the gathered answer


def gathered(answer: Any) -> Any:
    """A :class:`Stream` as one object (head, the rows as a list, tail); anything else as
    it is."""
    if not isinstance(answer, Stream):
        return answer
    rows = list(answer.rows)
    return {**answer.head, answer.rows_key: rows, **answer.tail()}


def _send(wfile: Any, obj: Any) -> None:
    wfile.write(json.dumps(obj, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    """At most ``max_handlers`` requests in progress; the excess is refused at once."""

    daemon_threads = True

    def __init__(self, path: str, handler: type[socketserver.BaseRequestHandler],
                 max_handlers: int) -> None:
        self.max_handlers = max_handlers
        self.slots = threading.BoundedSemaphore(max_handlers)
        self.refused = 0
        super().__init__(path, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(json.dumps({"ok": False, "error": (
                    f"daemon busy: {self.max_handlers} control requests in progress, "
                    "connection refused; try again")}).encode() + b"\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()  # no thread was started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class ControlServer:
    def __init__(self, path: str, submit: Callable[..., Any], *,
                 read_timeout: float = READ_TIMEOUT, max_handlers: int = MAX_HANDLERS) -> None:
        self.path = path
        self.submit = submit
        self.read_timeout = read_timeout
        self.max_handlers = max_handlers
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._inode = 0

    def start(self) -> ControlServer:
        submit = self.submit

        class Handler(socketserver.StreamRequestHandler):
            timeout = self.read_timeout  # applied to the socket by setup()

            def handle(self) -> None:
                try:
                    raw = self.rfile.readline(MAX_REQUEST)
                except OSError:  # TimeoutError included: a silent client is dropped
                    with contextlib.suppress(OSError):
                        self.wfile.write(json.dumps({"ok": False, "error": (
                            f"no request within {self.timeout:g} s")}).encode() + b"\n")
                    return
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError("request must be {\"cmd\": NAME, \"args\": {...}}")
                    data = submit(req["cmd"], req.get("args") or {})
                    if isinstance(data, Stream) and req.get("stream"):
                        self._stream(data)
                        return
                    answer = {"ok": True, "data": gathered(data)}
                except Exception as exc:  # noqa: BLE001 -- every error goes to the client
                    answer = {"ok": False, "error": str(exc)}
                with contextlib.suppress(OSError):  # the client went away or stalled
                    _send(self.wfile, answer)

            def _stream(self, data: Stream) -> None:
                """Row by row: the daemon holds one batch of rows, never the whole answer.
                A client that goes away ends the walk (the write fails)."""
                with contextlib.suppress(OSError):
                    _send(self.wfile, {"ok": True, "stream": True, "data": data.head})
                    try:
                        for row in data.rows:
                            _send(self.wfile, {"row": row})
                        tail = {"end": data.tail()}
                    except OSError:
                        raise
                    except Exception as exc:  # noqa: BLE001 -- told to the client
                        tail = {"error": str(exc)}
                    _send(self.wfile, tail)

        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        old = os.umask(0o077)
        try:
            self._server = _Server(self.path, Handler, self.max_handlers)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        self._thread = threading.Thread(target=self._server.serve_forever, name="control",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            # Only our own socket: a daemon started meanwhile (a restart racing this exit)
            # may already have bound the same path.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        raise ControlError(f"no flowpin daemon at {path} (is it running? see "
                           "`flowpin daemon --config FILE`)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (the control socket is root's)"
                           ) from None
    except ConnectionRefusedError:
        raise ControlError(f"flowpin daemon at {path} is not running (stale socket)"
                           ) from None
    except TimeoutError:
        s.close()
        raise ControlError(f"flowpin daemon at {path} did not accept within {timeout:g} s"
                           ) from None
    return s


def request(path: str, cmd: str, args: dict[str, Any] | None = None,
            timeout: float = 15.0) -> Any:
    """Send one command to the daemon at ``path``; return its data or raise ControlError."""
    s = _connect(path, timeout)
    with s:
        try:
            # A daemon that is busy answers and closes before reading: read its answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            # A daemon that is busy (or hung) is a daemon that did not answer, as the callers
            # that wait for one to come up expect: not a raw socket error.
            raise ControlError(f"flowpin daemon at {path} did not answer {cmd!r} within "
                               f"{timeout:g} s") from None
    if not buf:
        raise ControlError(f"flowpin daemon at {path} closed the connection")
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "unknown error"))
    return answer["data"]


def request_stream(path: str, cmd: str, args: dict[str, Any] | None = None,
                   timeout: float = 15.0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Send one command asking for a stream; yield ``("head", HEAD)``, ``("row", ROW)`` for
    each row as it arrives, then ``("end", TAIL)``. A command that does not stream yields
    ``("data", ANSWER)`` alone. Raises ControlError as :func:`request` does."""
    s = _connect(path, timeout)
    with s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(json.dumps({"cmd": cmd, "args": args or {}, "stream": True}).encode()
                      + b"\n")
        f = s.makefile("rb")
        first = True
        try:
            for raw in f:
                msg = json.loads(raw)
                if first:
                    first = False
                    if not msg.get("ok"):
                        raise ControlError(msg.get("error", "unknown error"))
                    if not msg.get("stream"):
                        yield "data", msg["data"]
                        return
                    yield "head", msg["data"]
                elif "row" in msg:
                    yield "row", msg["row"]
                elif "end" in msg:
                    yield "end", msg["end"]
                    return
                else:
                    raise ControlError(msg.get("error", "unknown error"))
        except TimeoutError:
            raise ControlError(f"flowpin daemon at {path} did not answer {cmd!r} within "
                               f"{timeout:g} s") from None
    raise ControlError(f"flowpin daemon at {path} closed the connection"
                       + (" midway through the answer" if not first else ""))
