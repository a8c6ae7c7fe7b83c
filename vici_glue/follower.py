"""Follow charon: connect, resync, stream SA events, notice when it goes, reconnect.

:class:`Follower` runs in its own thread and puts what it learns on a queue, in order:

- :class:`Resync` after every (re)connect: the configured CHILD_SAs (``list-conns``) and the
  installed SAs (``list-sas``). Events are registered *before* the listing is read, so none
  is lost in between; an event that the listing already reflects is harmless to apply twice
  (the registry is idempotent on it).
- :class:`vici_glue.events.SAEvent` for every SA event.
- :class:`Disconnected` when charon goes away (socket closed, charon killed): all its SAs
  are gone with it.

Reconnection backs off exponentially (0.05 s doubling to 1 s: a charon that restarts is
an outage of every tunnel, so it is looked for often) and resets once connected.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field

import vici
from vici.exception import SessionException

from vici_glue.events import (
    EVENT_KINDS,
    ChildConfig,
    IkeSA,
    SAEvent,
    parse_conns,
    parse_event,
    parse_sas,
)
from vici_glue.session import decode, ipsec_backend

log = logging.getLogger("flowpin.vici")


@dataclass(frozen=True)
class Resync:
    conns: list[ChildConfig]
    sas: list[IkeSA]
    received: float = field(default_factory=time.monotonic)
    backend: str = "unknown"  # charon's IPsec backend (kernel-netlink, kernel-libipsec)


@dataclass(frozen=True)
class Disconnected:
    reason: str
    received: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Received:
    """An SA event with the monotonic time it was read off the socket."""

    event: SAEvent
    received: float


Item = Resync | Received | Disconnected


def _open(path: str, timeout: float = 2.0) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return vici.Session(sock)


def _close(sess: vici.Session | None) -> None:
    if sess is None:
        return
    with contextlib.suppress(OSError):
        sess.transport.close()


class Follower:
    def __init__(self, path: str, out: queue.Queue[Item] | None = None, *,
                 poll: float = 0.2, backoff_min: float = 0.05, backoff_max: float = 1.0) -> None:
        self.path = path
        self.out: queue.Queue[Item] = out if out is not None else queue.Queue()
        self.poll = poll
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.connected = threading.Event()
        self.reconnects = 0
        self.decode_errors = 0  # events or listings that did not decode
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vici-follower", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _resync(self) -> None:
        """Read what charon has configured and installed, and hand it on as one Resync.
        A listing that does not decode raises: the caller treats charon as unreachable
        (every tunnel DOWN, nothing guessed) and tries again."""
        cmd = _open(self.path)
        try:
            conns = parse_conns(list(cmd.list_conns()))
            sas = parse_sas(list(cmd.list_sas()))
            backend = ipsec_backend(cmd.stats())
        finally:
            _close(cmd)
        log.debug("charon at %s: %d configured CHILD_SAs, %d IKE_SAs", self.path, len(conns),
                  len(sas))
        self.out.put(Resync(conns, sas, backend=backend))

    def _on_undecodable(self, name: object, msg: object, exc: BaseException) -> None:
        """One event that did not decode: ONE warning naming it and its raw text, then a
        resync. Skipping it silently could miss a CHILD_SA going down (its tunnel would
        stay UP with no SA behind it); the listing says what is true now."""
        self.decode_errors += 1
        raw = repr(msg)
        if len(raw) > 2000:
            raw = raw[:2000] + "..."
        log.warning("undecodable VICI event %r (%s: %s), resyncing; raw: %s",
                    decode(name), type(exc).__name__, exc, raw)
        self._resync()

    def _run(self) -> None:
        """Follow charon until stopped. Nothing charon sends ends this thread: a thread
        that died would leave the daemon running deaf, with every tunnel frozen in its last
        state while SAs come and go."""
        backoff = self.backoff_min
        announced_down = False
        while not self._stop.is_set():
            listener = None
            stream = None
            try:
                listener = _open(self.path)
                stream = listener.listen(list(EVENT_KINDS), timeout=self.poll)
                first = next(stream)  # registers for the events, then waits one poll
                self._resync()
                self.connected.set()
                announced_down = False
                backoff = self.backoff_min
                pending = [first]
                while not self._stop.is_set():
                    name, msg = pending.pop() if pending else next(stream)
                    if name is None:
                        continue
                    try:
                        ev = parse_event(name, msg)
                    except Exception as exc:  # noqa: BLE001 -- any decoder failure
                        self._on_undecodable(name, msg, exc)
                        continue
                    self.out.put(Received(ev, time.monotonic()))
            except Exception as exc:  # noqa: BLE001 -- see the docstring
                if self._stop.is_set():
                    break
                self.connected.clear()
                # A listing that does not decode (or a bug) is handled as if charon were
                # gone: tunnels DOWN and held, then reconnect and list again.
                undecodable = not isinstance(exc, OSError | SessionException | StopIteration)
                self.decode_errors += undecodable
                if not announced_down:
                    if undecodable:
                        log.warning("charon at %s: cannot follow (%s: %s); treated as "
                                    "unreachable until a listing decodes", self.path,
                                    type(exc).__name__, exc)
                    else:
                        log.warning("charon at %s unreachable: %s", self.path,
                                    exc or "closed")
                    self.out.put(Disconnected(str(exc) or "connection closed"))
                    announced_down = True
                    self.reconnects += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
            finally:
                if stream is not None:
                    # Unregisters the events, or fails quietly when charon is gone.
                    with contextlib.suppress(Exception):
                        stream.close()
                _close(listener)
