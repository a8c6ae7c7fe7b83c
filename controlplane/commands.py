"""What the daemon answers on its control socket: one function per command, registered
once with its wire name and whether it only reads.

- ``@reads``: the command runs in the control connection's own thread, on a
  :class:`~controlplane.snapshot.Snapshot` the loop takes in microseconds, beside the
  threads that write (the follower applying SA events, the loop, the sweeper), so that
  ``show conn`` over a million flows never delays an SA event.
- ``@changes``: the command runs on the daemon's loop, under the lock every writer of the
  registry and the maps takes, through the :class:`Control` interface.

Each returns plain JSON-able data; :mod:`controlplane.show` renders it as the ASA prints it.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pyroute2 import IPRoute

from controlplane import protocols, sysopt, version
from controlplane.addresses import net_text
from controlplane.config import Config
from controlplane.control import Stream
from controlplane.flow_table import FlowTable
from controlplane.flow_types import Side
from controlplane.flows import Flow, RemovedFlow
from controlplane.hooks import hooked, missing_filters
from controlplane.snapshot import Snapshot
from controlplane.tunnel_maps import DatapathTunnel

Args = dict[str, Any]


class Control(Protocol):
    """What the changing commands may do to the daemon (implemented by ``Daemon``)."""

    table: FlowTable | None

    def snapshot(self) -> Snapshot:
        """The daemon's state now (see :class:`Snapshot`)."""

    def set_sysopt(self, option: str, on: bool, tunnel: str | None) -> None:
        """Change a sysopt at run time (kept across restarts), effective at once."""

    def log_removed(self, removed: list[RemovedFlow]) -> None:
        """Log and count the teardown of flows removed from the maps."""

    def reload(self, path: str) -> Config:
        """Load the configuration file ``path``; raise (and keep running) if it is bad."""


@dataclass(frozen=True)
class Command:
    name: str  # as the CLI sends it
    read_only: bool
    run: Callable[[Any, Args], Any]  # (Snapshot | Control, args) -> JSON-able data


COMMANDS: dict[str, Command] = {}


def _register(name: str, read_only: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in COMMANDS:
            raise RuntimeError(f"control command {name!r} registered twice")
        COMMANDS[name] = Command(name, read_only, fn)
        return fn
    return register


def reads(name: str) -> Callable[[Callable[[Snapshot, Args], Any]],
                                 Callable[[Snapshot, Args], Any]]:
    """Register a read-only command: it gets a snapshot, never the daemon."""
    return _register(name, read_only=True)


def changes(name: str) -> Callable[[Callable[[Control, Args], Any]],
                                   Callable[[Control, Args], Any]]:
    """Register a command that changes the daemon's state: it runs on the loop."""
    return _register(name, read_only=False)


def lookup(name: str) -> Command:
    try:
        return COMMANDS[name]
    except KeyError:
        raise ValueError(f"unknown command {name!r}") from None


# --- read-only -----------------------------------------------------------------------------

def _flow_flags(f: Flow, pinned: bool) -> str:
    """ASA-like letters: U up (established), O outbound data, I inbound data, f inside FIN,
    r outside FIN, R reset, s embryonic, P picked up mid-stream; then PINNED."""
    lan = f.lan_side if f.lan_side is not None else f.initiator
    far = 1 - lan
    flags = ""
    if f.key.proto == protocols.TCP:
        state = f.tcp_state
        if state in ("ESTABLISHED", "HALF_CLOSED"):
            flags += "U"
        elif state in ("SYN_SENT", "SYN_RECV"):
            flags += "s"
        if (f.side[0] | f.side[1]) & Side.PICKUP:
            flags += "P"
        if f.side[lan] & Side.FIN:
            flags += "f"
        if f.side[far] & Side.FIN:
            flags += "r"
        if (f.side[0] | f.side[1]) & Side.RST:
            flags += "R"
    if f.bytes[lan]:
        flags += "O"
    if f.bytes[far]:
        flags += "I"
    return flags + (" PINNED" if pinned else "")


def _datapath_tunnels(table: FlowTable) -> dict[int, DatapathTunnel]:
    return {t.id: t for t in table.tunnels()}


def _is_pinned(f: Flow, tunnels: dict[int, DatapathTunnel]) -> bool:
    t = tunnels.get(f.tunnel_id)
    return bool(f.tunnel_id and t and not t.up and t.preserve and f.key.proto == protocols.TCP
                and f.generation == t.generation)


def _conn_row(s: Snapshot, f: Flow, tunnels: dict[int, DatapathTunnel], now: int) -> dict[str, Any]:
    lan = f.lan_side if f.lan_side is not None else f.initiator
    far = 1 - lan
    reg = s.by_id(f.tunnel_id)
    pinned = _is_pinned(f, tunnels)
    t = tunnels.get(f.tunnel_id)
    return {
        "protocol": protocols.label(f.key.proto),
        "outside": {"address": str(f.key.addr[far]), "port": f.key.port[far]},
        "inside": {"address": str(f.key.addr[lan]), "port": f.key.port[lan]},
        "initiator": "inside" if f.initiator == lan else "outside",
        "state": f.tcp_state,
        "idle_s": max(0, now - f.last_s),
        "duration_s": max(0, now - f.created_s),
        "bytes": sum(f.bytes),
        "bytes_out": f.bytes[lan],
        "bytes_in": f.bytes[far],
        "packets": sum(f.packets),
        "flags": _flow_flags(f, pinned),
        "pinned": pinned,
        "stale": bool(f.tunnel_id and t and f.generation != t.generation),
        "tunnel_id": f.tunnel_id,
        "tunnel": reg.name if reg else ("-" if f.tunnel_id == 0 else f"#{f.tunnel_id}"),
    }


def _tunnel_id(s: Snapshot, name: str | None) -> int | None:
    return s.tunnel_named(name).tunnel_id if name else None


@dataclass(frozen=True)
class ConnFilter:
    """What ``show conn`` and ``clear conn`` select: the same filters for both (the CLI
    takes them as options or as the ASA's keywords)."""

    tunnel_id: int | None = None
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    port: int | None = None
    protocol: int | None = None

    @classmethod
    def parse(cls, s: Snapshot, a: Args) -> ConnFilter:
        """From a request's arguments; ValueError with a clear text for a bad one (nothing
        is shown or cleared then)."""
        try:
            address = ipaddress.ip_address(a["address"]) if a.get("address") else None
        except ValueError:
            raise ValueError(f"address {a['address']!r} is not an IPv4 or IPv6 address") \
                from None
        port = protocols.port(a["port"]) if a.get("port") not in (None, "") else None
        proto = protocols.number(str(a["protocol"])) if a.get("protocol") else None
        return cls(_tunnel_id(s, a.get("tunnel")), address, port, proto)

    def matches(self, f: Flow) -> bool:
        return ((self.tunnel_id is None or f.tunnel_id == self.tunnel_id)
                and (self.address is None or self.address in f.key.addr)
                and (self.port is None or self.port in f.key.port)
                and (self.protocol is None or f.key.proto == self.protocol))


@reads("show-conn")
def show_conn(s: Snapshot, a: Args) -> Stream:
    """``show conn [FILTERS] [--pinned] [--limit N]``: the flows, as the ASA lists
    connections, in table order, a batch of the table at a time (never the whole table in
    memory); at most ``limit`` rows. ``in_use`` counts every flow walked, ``shown`` the
    rows sent, ``limited`` whether rows were left out for the limit."""
    selected = ConnFilter.parse(s, a)
    limit = int(a["limit"]) if a.get("limit") not in (None, "") else None
    if limit is not None and limit < 0:
        raise ValueError(f"limit {limit} is negative")
    pinned_only = bool(a.get("pinned"))
    tunnels = _datapath_tunnels(s.table)
    now = s.now_s()
    done = {"in_use": 0, "shown": 0, "limited": False}

    def rows() -> Iterator[dict[str, Any]]:
        table = s.table
        for fam in (4, 6):
            for keys, values, n in table.chunks(fam):
                done["in_use"] += n
                if limit is not None and done["shown"] >= limit:
                    continue  # past the limit: only counted, never decoded
                for i in range(n):
                    f = table.decode(fam, keys[i], values[i])
                    if not selected.matches(f):
                        continue
                    if pinned_only and not _is_pinned(f, tunnels):
                        continue
                    if limit is not None and done["shown"] >= limit:
                        done["limited"] = True
                        break
                    done["shown"] += 1
                    yield _conn_row(s, f, tunnels, now)

    return Stream({}, rows(), lambda: dict(done))


@dataclass(frozen=True)
class FlowSummary:
    flows: int  # every flow in the table, as the last sweep left it
    held: int  # pinned: TCP flows of a tunnel that is down, held for it (show conn --pinned)


def flow_summary(s: Snapshot) -> FlowSummary:
    """The flows and the held ones, from the sweeper's counts (controlplane.flow_counts):
    `flowpin status`, the systemd STATUS= line and the metrics count the same way."""
    return FlowSummary(s.counts.total, s.counts.held(_datapath_tunnels(s.table)))


_net = net_text  # the selectors' texts, cached (controlplane.addresses)


def _metric_row(s: Snapshot, t: Any, tunnels: dict[int, DatapathTunnel],
                guard: dict[int, tuple[int, int]],
                kicks: dict[int, tuple[int, int]]) -> dict:
    """What the metrics read of a tunnel: its counts and state, none of the texts that
    ``show vpn-context`` adds (a scrape builds 1,000 of these)."""
    dt = tunnels.get(t.tunnel_id)
    guard_out, guard_in = guard.get(t.tunnel_id, (0, 0))
    counted = s.counts.tunnel(dt, t.tunnel_id)
    kicked, limited = kicks.get(t.tunnel_id, (0, 0))
    resumed, resume_held = s.resumed.get(t.tunnel_id, (0, 0))
    return {"tunnel": t.name, "peer": t.peer_id, "state": t.state, "since": t.since,
            "flows": counted.flows, "pinned": counted.held,
            "flow_bytes_out": counted.bytes_out, "flow_bytes_in": counted.bytes_in,
            "held_packets": dt.held if dt else 0, "refused": dt.refused if dt else 0,
            "cleartext_dropped_out": guard_out, "cleartext_dropped_in": guard_in,
            "ups": t.ups, "downs": t.downs, "kicked": kicked, "kicks_limited": limited,
            "resumed_flows": resumed, "resume_held_flows": resume_held}


def _tunnel_row(s: Snapshot, t: Any, tunnels: dict[int, DatapathTunnel],
                guard: dict[int, tuple[int, int]],
                kicks: dict[int, tuple[int, int]]) -> dict:
    dt = tunnels.get(t.tunnel_id)
    guard_out, guard_in = guard.get(t.tunnel_id, (0, 0))
    counted = s.counts.tunnel(dt, t.tunnel_id)
    gen = dt.generation if dt else 0
    child = t.newest()
    kicked, limited = kicks.get(t.tunnel_id, (0, 0))
    return {
        "id": t.tunnel_id,
        "tunnel": t.name,
        "conn": t.key[0],
        "child": t.key[1],
        "peer": t.peer_id,
        "peer_host": t.peer_host,
        "state": t.state,
        "datapath_state": dt.state if dt else "-",
        "preserve": s.preserve_for(t.key),
        "generation": gen,
        "since": t.since,
        "spi_in": child.spi_in if child else "",
        "spi_out": child.spi_out if child else "",
        "child_sas": len(t.children),
        "local_ts": [_net(n) for n in t.local_ts],
        "remote_ts": [_net(n) for n in t.remote_ts],
        "flows": counted.flows,
        "pinned": counted.held,
        "flow_bytes_out": counted.bytes_out,
        "flow_bytes_in": counted.bytes_in,
        "held_packets": dt.held if dt else 0,
        "resume_kick": s.cfg.kick_for(*t.key),
        "kicked": kicked,
        "kicks_limited": limited,
        "resumed_flows": s.resumed.get(t.tunnel_id, (0, 0))[0],
        "resume_held_flows": s.resumed.get(t.tunnel_id, (0, 0))[1],
        "refused": dt.refused if dt else 0,
        "cleartext_dropped_out": guard_out,
        "cleartext_dropped_in": guard_in,
        "missing_since": t.missing_since or None,
        "ups": t.ups,
        "downs": t.downs,
        "demand": ({"attempts": dm.attempts, "last_error": dm.last_error}
                   if (dm := s.demand.get(t.key)) else None),
    }


@reads("show-vpn-context")
def show_vpn_context(s: Snapshot, a: Args) -> dict[str, Any]:
    """``show vpn-context``: every tunnel, its state in charon and in the data path; flow
    counts as of the last sweep (``counted_at``, see controlplane.flow_counts)."""
    tunnels = _datapath_tunnels(s.table)
    guard = s.table.guard_counts()
    kicks = s.table.kick_counts()
    rows = [_tunnel_row(s, t, tunnels, guard, kicks)
            for t in sorted(s.tunnels, key=lambda t: t.tunnel_id)]
    return {"charon": "connected" if s.charon_up else "unreachable",
            "ipsec_backend": s.ipsec_backend, "tunnels": rows,
            "counted_at": s.counts.at or None, "counted_age_s": s.counts.age_s()}


@reads("show-sysopt")
def show_sysopt(s: Snapshot, a: Args) -> dict[str, Any]:
    """``show sysopt``: the options in effect and the timeouts."""
    return sysopt.shown(s.cfg, s.sysopt)


def latency_since(recent: Sequence[float], total: int, after: Any) -> Sequence[float]:
    """Of the ``recent`` event-to-map samples (the last of ``total`` measured), those of
    the events after the first ``after`` (None: all of them)."""
    if after is None:
        return recent
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise ValueError(f"after: an event count (an integer >= 0), not {after!r}")
    return recent[len(recent) - min(len(recent), max(0, total - after)):]


@reads("show-counters")
def show_counters(s: Snapshot, a: Args) -> dict[str, Any]:
    """``show counters``: packets by verdict, the daemon's counts, event-to-map latency
    (of the last 10,000 events; with ``after`` = an earlier answer's ``total``, of the
    events since that answer only: what a benchmark's own events took)."""
    total = int(s.latency_histogram["count"])
    lat = sorted(latency_since(s.latency_ms, total, a.get("after")))

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

    table = s.table
    return {"datapath": table.counters(), "daemon": dict(s.stats),
            "event_to_map_ms": {"count": len(lat), "total": total, "p50": pct(0.5),
                                "p99": pct(0.99),
                                "max": round(lat[-1], 3) if lat else None},
            "flows": s.counts.total, "flows_counted_age_s": s.counts.age_s(),
            "flow_table_size": s.cfg.flow_table_size,
            "nonvpn": {str(fam): {"flows": table.nonvpn_flows(fam),
                                  "limit": table.nonvpn_limit(fam)} for fam in (4, 6)},
            "uptime_s": round(time.time() - s.started, 1)}


@reads("metrics")
def metrics(s: Snapshot, a: Args) -> dict[str, Any]:
    """What the Prometheus endpoint serves: the counters and every tunnel."""
    out = show_counters(s, a)
    tunnels = _datapath_tunnels(s.table)
    guard = s.table.guard_counts()
    kicks = s.table.kick_counts()
    out["tunnels"] = [_metric_row(s, t, tunnels, guard, kicks)
                      for t in sorted(s.tunnels, key=lambda t: t.tunnel_id)]
    out["charon_up"] = s.charon_up
    out["ipsec_backend"] = s.ipsec_backend
    out["event_to_map_seconds"] = dict(s.latency_histogram)
    return out


@reads("status")
def status(s: Snapshot, a: Args) -> dict[str, Any]:
    """``flowpin status``: which daemon this is, what it follows, and how it is doing:
    tunnels up, flows held, hooks attached (asked of the kernel now), the last problem."""
    summary = flow_summary(s)
    hooks = []
    with IPRoute() as ipr:
        for ifname, role in hooked(s.cfg.lan_interfaces, s.wan_guarded):
            missing = missing_filters(ipr, ifname, role, s.link_fd)
            hooks.append({"interface": ifname, "role": role, "attached": not missing,
                          "missing": missing})
    last = s.last_problem
    return {"instance": s.cfg.instance, "version": version(), "pid": os.getpid(),
            "config": s.cfg.path, "uptime_s": round(time.time() - s.started, 1),
            "charon_up": s.charon_up, "ipsec_backend": s.ipsec_backend,
            "vici_socket": s.cfg.vici_socket,
            "tunnels": {"up": sum(1 for t in s.tunnels if t.state == "UP"),
                        "total": len(s.tunnels)},
            "flows": summary.flows, "held": summary.held,
            "flow_table_size": s.cfg.flow_table_size,
            "lan_interfaces": list(s.cfg.lan_interfaces), "wan_guard": list(s.wan_guarded),
            "attach": {"mode": s.attach, "probe": s.attach_why},
            "hooks": hooks,
            "last_problem": {"at": last[0], "line": last[1]} if last else None}



# --- changes -------------------------------------------------------------------------------

@changes("sysopt")
def set_sysopt(d: Control, a: Args) -> dict[str, Any]:
    """``[no] sysopt connection OPTION [--tunnel T]``: effective at once, on tunnels already
    up too; answers as ``show sysopt``."""
    option, on, tunnel = a.get("option"), bool(a.get("on")), a.get("tunnel")
    if tunnel and option == "preserve-vpn-flows":
        tunnel = d.snapshot().tunnel_named(tunnel).name
    d.set_sysopt(str(option), on, tunnel)
    return show_sysopt(d.snapshot(), {})


@changes("clear-conn")
def clear_conn(d: Control, a: Args) -> dict[str, Any]:
    """``clear conn [FILTERS]``: remove matching flows, each logged as a teardown."""
    assert d.table is not None
    snap = d.snapshot()
    selected = ConnFilter.parse(snap, a)
    now = snap.now_s()
    cleared = []
    for f in list(d.table.flows()):
        if selected.matches(f) and d.table.delete_flow(f.key):
            cleared.append(RemovedFlow("Flow cleared by admin",
                                       float(max(0, now - f.created_s)), decoded=f))
    d.log_removed(cleared)
    return {"cleared": len(cleared)}


@changes("reload")
def reload(d: Control, a: Args) -> dict[str, Any]:
    """``flowpin reload`` (as SIGHUP): reload the configuration file; answers as
    ``show sysopt``."""
    snap = d.snapshot()
    d.reload(str(a.get("path") or snap.cfg.path))
    return show_sysopt(d.snapshot(), {})
