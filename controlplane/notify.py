"""systemd's service notifications (sd_notify): READY, RELOADING, STOPPING, STATUS, WATCHDOG.

Under ``Type=notify`` systemd starts the units ordered after flowpin, and ``systemctl start``
returns, only when the daemon says READY=1. flowpin says it once the data path is attached
*and* charon's state has been applied once (the first resync, or charon found unreachable,
which holds every tunnel DOWN): from then on the gateway's traffic is judged against what
charon has installed, not against the previous run's tunnels.

The datagrams go through python3-systemd (``systemd.daemon.notify``, libsystemd's
``sd_pid_notify``), which handles ``NOTIFY_SOCKET`` in all its forms (a path, an abstract
socket ``@…``). Without ``NOTIFY_SOCKET`` (not started by systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

# How often STATUS= is recomputed (it counts held flows: a read of the whole flow table).
STATUS_INTERVAL = 5.0


class NotifyError(RuntimeError):
    pass


class ServiceNotifier:
    """The daemon's side of the notify protocol. Thread-safe (one datagram per call)."""

    def __init__(self, enabled: bool = True) -> None:
        # libsystemd reads NOTIFY_SOCKET from the environment itself.
        env = os.environ if enabled else {}
        self.socket = env.get("NOTIFY_SOCKET", "")
        self._send: Callable[[str], object] | None = None
        if self.socket:
            try:
                from systemd import daemon as sd_daemon
            except ImportError as exc:
                # Under Type=notify a daemon that never says READY is killed at the start
                # timeout: say why now instead.
                raise NotifyError("NOTIFY_SOCKET is set (Type=notify) but python3-systemd "
                                  "is missing: install the Debian package python3-systemd"
                                  ) from exc
            self._send = sd_daemon.notify
        # The watchdog applies to this process only (WATCHDOG_PID, when set, names it).
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval = (int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0
                                  and (not pid or pid == str(os.getpid())) else 0.0)
        self._next_ping = 0.0
        self._status = ""
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def send(self, *fields: str) -> bool:
        """One notification of ``KEY=value`` fields; False when there is no one to tell."""
        if self._send is None:
            return False
        with self._lock:
            return bool(self._send("\n".join(fields)))

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # systemd >= 253 (Type=notify-reload) wants MONOTONIC_USEC beside RELOADING=1, to
        # tell this reload from an earlier one; 252 (Debian 12) ignores the field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def reloaded(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: tunnels held DOWN, data path left attached")

    def status(self, text: str) -> None:
        """STATUS=, only when the text changed (``systemctl status`` shows the last one)."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def tick(self, now: float) -> None:
        """From the daemon's main loop: WATCHDOG=1 at half the interval systemd set, so a
        loop that stops turning gets the service restarted (WatchdogSec= in the unit)."""
        if self.watchdog_interval and now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval
            self.send("WATCHDOG=1")


def status_line(d: Any) -> str:
    """``charon connected (kernel-libipsec); 3 of 4 tunnels up; 120 flows, 12 held; tcx
    hooks`` (the data path's attach mode last).

    Held flows are the TCP flows pinned for a tunnel that is down (preserve-vpn-flows):
    they are counted from the flow table, so this runs beside the loop, never in it."""
    with d.lock:  # a snapshot is taken under the lock (microseconds), read after it
        snap = d.snapshot()
    charon = (f"charon connected ({snap.ipsec_backend})" if snap.charon_up
              else "charon unreachable: all tunnels held DOWN")
    # "Held" as `show conn --pinned` and `flowpin status` count it (one definition)
    from controlplane.commands import flow_summary

    summary = flow_summary(snap)
    flows, held = summary.flows, summary.held
    up = sum(1 for t in snap.tunnels if t.state == "UP")
    return (f"{charon}; {up} of {len(snap.tunnels)} tunnels up; {flows} flows, {held} held; "
            f"{snap.attach} hooks")


class StatusReporter:
    """Keeps STATUS= current: recomputed every :data:`STATUS_INTERVAL` seconds, or sooner
    when poked (a tunnel went up or down), on a thread of its own."""

    def __init__(self, notifier: ServiceNotifier, line: Callable[[], str],
                 interval: float = STATUS_INTERVAL) -> None:
        self.notifier, self.line, self.interval = notifier, line, interval
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StatusReporter:
        if self.notifier.enabled:
            self._thread = threading.Thread(target=self._run, name="sd-status", daemon=True)
            self._thread.start()
        return self

    def poke(self) -> None:
        self._poke.set()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self.interval)
            self._poke.clear()
            if self._stop.is_set():
                break
            try:
                self.notifier.status(self.line())
            except Exception:  # noqa: BLE001 -- a status line is not worth a stop
                continue


def announce_ready(daemon: Any) -> StatusReporter:
    """READY=1 once the daemon has applied charon's state (``daemon.charon_heard``), then
    STATUS= kept current. Returns the reporter (``stop()`` it before the daemon stops)."""
    notifier: ServiceNotifier = daemon.service
    reporter = StatusReporter(notifier, lambda: status_line(daemon))

    def wait_then_ready() -> None:
        while not daemon.charon_heard.wait(0.2):
            if daemon.stopping:
                return
        notifier.ready(status_line(daemon))
        reporter.start()

    if notifier.enabled:
        threading.Thread(target=wait_then_ready, name="sd-ready", daemon=True).start()
    return reporter
