"""Held flows moving again once their tunnel is back: the kick's settings and report.

The data path answers a held TCP segment from the LAN with an ICMP unreachable from the
gateway's LAN address (bpf/lib/kick.h), so the LAN sender's retransmission timer stays
short through an outage and it sends again within about one RTO of the tunnel being UP.
This module gives the data path that address and the limits, and writes the log line per
tunnel after an outage: how many held flows moved again and how many kicks were sent.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from typing import Any

from controlplane.messages import Msg, Sev, emit

# How long after UP the report counts the held flows that moved again: a sender kicked
# through the outage retransmits within about one RTO (well under a second).
REPORT_AFTER_S = 5.0


def lan_addresses(ifname: str) -> tuple[str | None, str | None]:
    """The first IPv4 address and the first IPv6 address (global before link-local) of
    ``ifname``: the kick's source, what a LAN host knows as its gateway."""
    from pyroute2 import IPRoute

    v4: str | None = None
    v6: list[str] = []
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return None, None
        for a in ipr.get_addr(index=idx[0]):
            addr = a.get_attr("IFA_ADDRESS")
            if not addr:
                continue
            ip = ipaddress.ip_address(addr)
            if ip.version == 4 and v4 is None:
                v4 = addr
            elif ip.version == 6:
                v6.append(addr)
    v6.sort(key=lambda s: ipaddress.ip_address(s).is_link_local)
    return v4, (v6[0] if v6 else None)


def configure(table: Any, lan_interface: str, interval_ms: int, budget: int) -> str:
    """Write the kick's source addresses and limits; returns a phrase for the start line."""
    v4, v6 = lan_addresses(lan_interface)
    table.set_kick_config(src4=v4, src6=v6, interval_ms=interval_ms, budget=budget)
    srcs = ", ".join(a for a in (v4, v6) if a) or "no address: off"
    return f"resume kick from {srcs} ({interval_ms} ms per flow, {budget}/s)"


class ResumeReport:
    """Per tunnel: the kick counter at DOWN, and after UP the line
    "Tunnel T UP: resumed N of H held flows within 5 s, kicked M during the outage"."""

    def __init__(self, table: Any, give_way: Callable[[], None] | None = None) -> None:
        self.table = table
        # a report reads the whole table, a batch at a time: SA events first (safe: an
        # event never waits for _reading, the only lock held while reading)
        self.give_way = give_way
        # tunnel id -> (kicked, repairs) at its DOWN: the report counts this outage's
        self._kicked_at_down: dict[int, tuple[int, int]] = {}
        # tunnel id -> (resumed, held) summed over the reports of its outages: the metrics'
        # flowpin_tunnel_resumed_flows_total and flowpin_tunnel_resume_held_flows_total.
        self._totals: dict[int, tuple[int, int]] = {}
        self._timers: set[threading.Timer] = set()
        # _lock guards the timers and totals, held only briefly: up() runs on the SA
        # event's path, under the daemon lock, and must never wait for a report's read
        # of the whole table (a second of CPU at a million flows). _reading is held
        # while a report reads the maps, so that stop() waits for it.
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._stopped = False

    def down(self, tunnel_id: int) -> None:
        self._kicked_at_down[tunnel_id] = self.table.kicks_sent(tunnel_id)

    def up(self, tunnel_id: int, name: str) -> None:
        if tunnel_id not in self._kicked_at_down:
            return
        up_s = int(time.monotonic())
        timer = threading.Timer(REPORT_AFTER_S, self._report, (tunnel_id, name, up_s))
        timer.daemon = True
        with self._lock:
            if self._stopped:
                return
            self._timers.add(timer)
        timer.start()

    def stop(self) -> None:
        """No report after this: the maps it reads are about to be closed (a report due
        during a stop read a closed map)."""
        with self._lock:
            self._stopped = True
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()
        with self._reading:  # a report reading now is done before the maps close
            pass

    def totals(self) -> dict[int, tuple[int, int]]:
        """(resumed, held) of each tunnel, summed over its reported outages (a copy)."""
        with self._lock:
            return dict(self._totals)

    def forget(self, tunnel_id: int) -> None:
        """The tunnel id is free again: its next tunnel starts from 0, as its counters."""
        with self._lock:
            self._totals.pop(tunnel_id, None)
        self._kicked_at_down.pop(tunnel_id, None)

    def counts(self, tunnel_id: int, up_s: int) -> tuple[int, int, int, int]:
        """(resumed, held, kicked, repairs) of the tunnel's last outage: held = its TCP
        flows, resumed = those that forwarded a packet since ``up_s``."""
        # raw bytes, not decoded flows: a million of those cost seconds per tunnel
        held, resumed = self.table.tcp_activity(tunnel_id, up_s, self.give_way)
        kicked, repairs = self.table.kicks_sent(tunnel_id)
        kicked0, repairs0 = self._kicked_at_down.get(tunnel_id, (0, 0))
        return resumed, held, kicked - kicked0, repairs - repairs0

    def _report(self, tunnel_id: int, name: str, up_s: int) -> None:
        with self._reading:  # stop() waits for a report being read
            with self._lock:
                self._timers = {t for t in self._timers if t.is_alive()}
                if self._stopped:
                    return
            resumed, held, kicked, repairs = self.counts(tunnel_id, up_s)
            with self._lock:
                r0, h0 = self._totals.get(tunnel_id, (0, 0))
                self._totals[tunnel_id] = (r0 + resumed, h0 + held)
        self._kicked_at_down.pop(tunnel_id, None)
        emit(Sev.INFO, Msg.TUNNEL_UP_RESUMED, f"Tunnel {name}: resumed {resumed} of {held} "
             f"held flows within {REPORT_AFTER_S:.0f} s of UP, kicked {kicked} "
             f"({repairs} repairs)")
