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


class ControlError(RuntimeError):
    """The daemon could not be reached or refused the request."""


class ControlServer:
    def __init__(self, path: str, submit: Callable[..., Any]) -> None:
        self.path = path
        self.submit = submit
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None
        self._inode = 0

    def start(self) -> ControlServer:
        submit = self.submit

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                raw = self.rfile.readline(MAX_REQUEST)
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError("request must be {\"cmd\": NAME, \"args\": {...}}")
                    data = submit(req["cmd"], req.get("args") or {})
                    answer = {"ok": True, "data": data}
                except Exception as exc:  # noqa: BLE001 -- every error goes to the client
                    answer = {"ok": False, "error": str(exc)}
                self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")

        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        old = os.umask(0o077)
        try:
            self._server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        self._server.daemon_threads = True
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
    with s:
        s.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    if not buf:
        raise ControlError(f"flowpin daemon at {path} closed the connection")
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "unknown error"))
    return answer["data"]
