"""Vocabulary of the table-driven data path tests: addresses, steps, a runner.

A case is a list of steps. A packet step names the hook (``out`` = clsact ingress, LAN ->
tunnel; ``in`` = clsact egress, tunnel -> LAN), the frame, and the verdict reason it must
get: the runner checks the return code and that exactly that reason's counter moved by
one. Other steps act on the maps (tunnel down/up, teardown, clock) or check map state.
Every case runs for IPv4 and IPv6 through the address plan ``Net``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controlplane.flow_table import FlowTable
from controlplane.flow_types import reason_retval
from controlplane.flows import Flow
from controlplane.libbpf import prog_test_run
from lab import packets as tr

BASE_CLOCK_S = 100_000
TUN = 1  # the tunnel of the standard selectors, UP + PRESERVE at the start of a case
TUN2 = 2  # same remote prefix, other local prefix; configured but never up


@dataclass(frozen=True)
class Net:
    """Addresses of one family: c = LAN client, s = remote server (tunnel 1),
    n = a non-VPN remote, o = a LAN host outside every local prefix,
    c3/s3 = second selector pair of tunnel 1, c5 = a LAN host of tunnel 2,
    r = a router on the remote side (ICMP errors)."""

    family: int
    c: str
    s: str
    n: str
    o: str
    c3: str
    s3: str
    c5: str
    r: str
    local: str
    remote: str
    local3: str
    remote3: str
    local5: str


NET4 = Net(4, "10.1.0.5", "10.2.0.9", "192.0.2.7", "10.9.0.5", "10.3.0.5", "10.4.0.9",
           "10.5.0.5", "10.2.255.1", "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16",
           "10.4.0.0/16", "10.5.0.0/16")
NET6 = Net(6, "fd00:1::5", "fd00:2::9", "2001:db8::7", "fd00:9::5", "fd00:3::5",
           "fd00:4::9", "fd00:5::5", "fd00:2::ffff", "fd00:1::/64", "fd00:2::/64",
           "fd00:3::/64", "fd00:4::/64", "fd00:5::/64")
NETS = {4: NET4, 6: NET6}


def reset_state(t: FlowTable) -> None:
    """No flows, standard selectors and tunnels, counters zero, no pickup, no events."""
    t.clear_flows()
    for sel in t.selectors():
        t.remove_selector(sel.tunnel_id, sel.local, sel.remote)
    for tid in range(t.tunnels_map.max_entries):
        k = t._tkey(tid)
        t.tunnels_map[k] = t.tunnels_map.Leaf()
        t.tunnel_stats_map[k] = t.tunnel_stats_map.Leaf()
        t.guard_stats_map[k] = t.guard_stats_map.Leaf()
    t.reset_counters()
    t.update_config(attach_ns=0, pickup_s=0, event_interval_ms=1000, flags=0)
    for net in NETS.values():
        t.add_selector(TUN, net.local, net.remote)
        t.add_selector(TUN, net.local3, net.remote3)
        t.add_selector(TUN2, net.local5, net.remote)
    t.set_tunnel(TUN, up=True, preserve=True)
    t.set_tunnel(TUN2, up=False, preserve=True)
    t.read_events()


# --- steps ---------------------------------------------------------------------------

@dataclass
class Pkt:
    hook: str  # "out" or "in"
    frame: bytes
    reason: str


@dataclass
class Act:
    """Do something to the maps: ``fn(table)``."""

    what: str
    fn: Callable[[FlowTable], Any]


@dataclass
class FlowIs:
    """The flow between endpoints a and b (any order) exists and has these attributes;
    ``absent=True``: no such flow."""

    a: tuple[str, int]
    b: tuple[str, int]
    proto: int = 6
    absent: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EventIs:
    """The events read now include one of this type for this tunnel (or none: count=0)."""

    type: str
    tunnel_id: int
    count: int | None = None


Step = Pkt | Act | FlowIs | EventIs


@dataclass
class Case:
    desc: str
    steps: Callable[[Net], list[Step]]
    families: tuple[int, ...] = (4, 6)


def out(frame: bytes, reason: str) -> Pkt:
    return Pkt("out", frame, reason)


def inb(frame: bytes, reason: str) -> Pkt:
    return Pkt("in", frame, reason)


def down(tid: int = TUN) -> Act:
    return Act(f"tunnel {tid} down", lambda t: t.set_tunnel(tid, up=False))


def up(tid: int = TUN) -> Act:
    return Act(f"tunnel {tid} up", lambda t: t.set_tunnel(tid, up=True))


def bump(tid: int = TUN) -> Act:
    return Act(f"teardown tunnel {tid}", lambda t: t.bump_generation(tid))


def release(tid: int = TUN) -> Act:
    return Act(f"release tunnel {tid}", lambda t: t.release(tid))


def add_sel(tid: int, local: str, remote: str) -> Act:
    """A selector change (as the daemon makes on a tunnel configured or changed)."""
    return Act(f"selector {local} -> {remote} to tunnel {tid}",
               lambda t: t.add_selector(tid, local, remote))


def reclassify(on: bool) -> Act:
    return Act(f"reclassify-vpn {'on' if on else 'off'}", lambda t: t.set_reclassify(on))


def advance(seconds: int) -> Act:
    def fn(t: FlowTable) -> None:
        t.set_clock(t.config().now_ns + seconds * 10**9)

    return Act(f"clock +{seconds}s", fn)


def pickup(window_s: int, attached_ago_s: int) -> Act:
    def fn(t: FlowTable) -> None:
        t.update_config(pickup_s=window_s, attach_ns=t.config().now_ns - attached_ago_s * 10**9)

    return Act(f"pickup window {window_s}s, attached {attached_ago_s}s ago", fn)


def handshake(n: Net, sport: int = 40000, dport: int = 80) -> list[Step]:
    """Client on the LAN opens a TCP connection to the remote server."""
    return [
        out(tr.tcp(n.c, n.s, sport, dport, "S", seq=1000), "PASS_NEW"),
        inb(tr.tcp(n.s, n.c, dport, sport, "SA", seq=5000, ack=1001), "PASS_FLOW"),
        out(tr.tcp(n.c, n.s, sport, dport, "A", seq=1001, ack=5001), "PASS_FLOW"),
    ]


# --- runner --------------------------------------------------------------------------

def _find_flow(t: FlowTable, a: tuple[str, int], b: tuple[str, int], proto: int) -> Flow | None:
    want = {(ipaddress.ip_address(a[0]), a[1]), (ipaddress.ip_address(b[0]), b[1])}
    fam = ipaddress.ip_address(a[0]).version
    for f in t.flows(fam):
        ends = {(f.key.addr[0], f.key.port[0]), (f.key.addr[1], f.key.port[1])}
        if f.key.proto == proto and ends == want:
            return f
    return None


def run_steps(dp: Any, steps: list[Step]) -> None:
    """Run the steps of a case on the data path ``dp``; assert at each step."""
    from controlplane.datapath import PROG_INBOUND, PROG_OUTBOUND

    t: FlowTable = dp.table
    fds = {"out": dp.prog_fd(PROG_OUTBOUND), "in": dp.prog_fd(PROG_INBOUND)}
    events: list[Any] = []
    for i, st in enumerate(steps):
        where = f"step {i} ({type(st).__name__})"
        if isinstance(st, Pkt):
            before = t.counters()
            res = prog_test_run(fds[st.hook], st.frame)
            after = t.counters()
            moved = {k: after[k] - before[k] for k in after
                     if after[k] != before[k] and k in _REASONS}
            assert moved == {st.reason: 1}, f"{where}: expected {st.reason}, counters {moved}"
            # the kernel reports the program's int as a u32: TC_ACT_UNSPEC (-1) as 2**32-1
            want = reason_retval(_REASONS[st.reason]) & 0xFFFFFFFF
            assert res.retval == want, f"{where}: retval {res.retval} for {st.reason}"
        elif isinstance(st, Act):
            st.fn(t)
        elif isinstance(st, FlowIs):
            f = _find_flow(t, st.a, st.b, st.proto)
            if st.absent:
                assert f is None, f"{where}: flow {st.a}<->{st.b} should be gone: {f}"
                continue
            assert f is not None, f"{where}: no flow {st.a}<->{st.b}"
            for name, value in st.attrs.items():
                got = value_of(f, name, st.a)
                assert got == value, f"{where}: flow.{name} = {got!r}, expected {value!r}"
        elif isinstance(st, EventIs):
            events += t.read_events()
            match = [e for e in events if e.type == st.type and e.tunnel_id == st.tunnel_id]
            if st.count is None:
                assert match, f"{where}: no {st.type} event for tunnel {st.tunnel_id}: {events}"
            else:
                assert len(match) == st.count, f"{where}: {len(match)} {st.type} events"


def value_of(f: Flow, name: str, a: tuple[str, int]) -> Any:
    """Flow attribute by name; ``pkts`` is (packets sent by a, packets sent by b) of the
    FlowIs step, ``opener_is_a`` whether a opened the flow, ``a_is_lan`` likewise."""
    ia = 0 if (f.key.addr[0], f.key.port[0]) == (ipaddress.ip_address(a[0]), a[1]) else 1
    if name == "pkts":
        return (f.packets[ia], f.packets[1 - ia])
    if name == "opener_is_a":
        return f.initiator == ia
    if name == "a_is_lan":
        return f.lan_side == ia
    return getattr(f, name)


def _reason_names() -> dict[str, int]:
    from controlplane.flow_types import Reason

    return {r.name: r.value for r in Reason}


_REASONS = _reason_names()
