"""The control socket between the CLI and the daemon: one JSON request, one JSON answer.

A Unix stream socket, mode 0600 and owned by root: only root may look at or change the
gateway's flows. Request ``{"cmd": "show-conn", "args": {...}}``; answer
``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
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
                    answer = {"ok": True, "data": data}
                except Exception as exc:  # noqa: BLE001 -- every error goes to the client
                    answer = {"ok": False, "error": str(exc)}
                with contextlib.suppress(OSError):  # the client went away or stalled
                    self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")

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


def request(path: str, cmd: str, args: dict[str, Any] | None = None,
            timeout: float = 15.0) -> Any:
    """Send one command to the daemon at ``path``; return its data or raise ControlError."""
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
