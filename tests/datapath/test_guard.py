"""The WAN guard (bpf/lib/guard.h), one row per packet: what the gateway sends or receives
on its WAN, and whether the guard drops it.

The rule under test: nothing whose addresses match a configured tunnel's selectors crosses
the WAN unprotected, whatever the tunnel's state; IPsec itself (ESP, IKE, ESP-in-UDP) and
traffic of no tunnel are not the guard's business (TC_ACT_UNSPEC: later filters decide).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from controlplane.datapath import PROG_WAN_IN, PROG_WAN_OUT
from controlplane.libbpf import prog_test_run
from lab import packets as tr
from tests.datapath.cases import NETS, TUN, TUN2, Net

TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as the kernel reports it
TC_ACT_SHOT = 2
GW_A = {4: "192.0.2.1", 6: "2001:db8::1"}  # this gateway's WAN address
GW_B = {4: "192.0.2.2", 6: "2001:db8::2"}  # the peer's


def _vlan(frame: bytes, *tags: tuple[int, int]) -> bytes:
    """Insert 802.1Q/802.1ad tags (tpid, vid) after the MAC addresses, outermost first."""
    raw = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags)
    return frame[:12] + raw + frame[12:]


def _esp(src: str, dst: str) -> bytes:
    return tr._ip(src, dst, 50, struct.pack("!II", 0x1000, 1) + b"\0" * 32)


@dataclass(frozen=True)
class Row:
    what: str
    hook: str  # "out" = WAN egress (we send), "in" = WAN ingress (we receive)
    frame: Callable[[Net], bytes]
    dropped_for: int  # the tunnel the guard counts the drop on; 0 = not dropped


ROWS = [
    # what we send
    Row("tunnel traffic in clear (TCP)", "out",
        lambda n: tr.tcp(n.c, n.s, 40000, 80, "A"), TUN),
    Row("tunnel traffic in clear (UDP)", "out",
        lambda n: tr.udp(n.c, n.s, 40000, 53, b"x"), TUN),
    Row("tunnel traffic in clear (ICMP echo)", "out",
        lambda n: tr.icmp_echo(n.c, n.s, 7), TUN),
    Row("second selector pair of the tunnel", "out",
        lambda n: tr.tcp(n.c3, n.s3, 40000, 80, "S"), TUN),
    Row("a tunnel that was never up", "out",
        lambda n: tr.tcp(n.c5, n.s, 40000, 80, "S"), TUN2),
    Row("802.1Q tagged, not offloaded", "out",
        lambda n: _vlan(tr.udp(n.c, n.s, 40000, 53), (0x8100, 10)), TUN),
    Row("QinQ (802.1ad + 802.1Q)", "out",
        lambda n: _vlan(tr.udp(n.c, n.s, 40000, 53), (0x88A8, 20), (0x8100, 10)), TUN),
    Row("LAN host to a non-VPN remote (NAT'd internet traffic)", "out",
        lambda n: tr.tcp(n.c, n.n, 40000, 443, "S"), 0),
    Row("LAN host outside every local selector", "out",
        lambda n: tr.tcp(n.o, n.s, 40000, 80, "S"), 0),
    Row("ESP between the gateways", "out",
        lambda n: _esp(GW_A[n.family], GW_B[n.family]), 0),
    Row("IKE", "out",
        lambda n: tr.udp(GW_A[n.family], GW_B[n.family], 500, 500, b"\0" * 28), 0),
    Row("ESP in UDP (NAT-T)", "out",
        lambda n: tr.udp(GW_A[n.family], GW_B[n.family], 4500, 4500, b"\1" * 40), 0),
    Row("ESP whose selectors cover the gateways (full tunnel)", "out",
        lambda n: _esp(n.c, n.s), 0),
    Row("IKE from a LAN address (full tunnel)", "out",
        lambda n: tr.udp(n.c, n.s, 4500, 4500, b"\1" * 40), 0),
    Row("ARP", "out", lambda n: tr.ether(b"\0" * 28, tr.ETH_P_ARP), 0),
    # what we receive
    Row("the peer's tunnel traffic in clear", "in",
        lambda n: tr.tcp(n.s, n.c, 80, 40000, "A"), TUN),
    Row("the peer's tunnel traffic in clear, tagged", "in",
        lambda n: _vlan(tr.tcp(n.s, n.c, 80, 40000, "A"), (0x8100, 10)), TUN),
    Row("ESP from the peer", "in", lambda n: _esp(GW_B[n.family], GW_A[n.family]), 0),
    Row("internet traffic to a LAN host", "in",
        lambda n: tr.tcp(n.n, n.c, 443, 40000, "SA"), 0),
    # either order of the addresses, on either hook
    Row("the peer's traffic decrypted, routed back out (LAN interface gone)", "out",
        lambda n: tr.tcp(n.s, n.c, 80, 40000, "A"), TUN),
    Row("our LAN spoofed as the source of a packet from the WAN", "in",
        lambda n: tr.tcp(n.c, n.s, 40000, 80, "A"), TUN),
    Row("internet traffic from a LAN host, reply direction", "out",
        lambda n: tr.tcp(n.n, n.c, 443, 40000, "SA"), 0),
]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("row", ROWS, ids=[r.what for r in ROWS])
def test_guard(dp: object, row: Row, family: int) -> None:
    table = dp.table  # type: ignore[attr-defined]
    net = NETS[family]
    prog = PROG_WAN_OUT if row.hook == "out" else PROG_WAN_IN
    before = table.guard_counts()
    res = prog_test_run(dp.prog_fd(prog), row.frame(net))  # type: ignore[attr-defined]
    after = table.guard_counts()
    if row.dropped_for:
        assert res.retval == TC_ACT_SHOT
        o, i = after[row.dropped_for]
        o0, i0 = before.get(row.dropped_for, (0, 0))
        assert (o - o0, i - i0) == ((1, 0) if row.hook == "out" else (0, 1))
    else:
        assert res.retval == TC_ACT_UNSPEC
        assert after == before


def test_guard_holds_whatever_the_tunnel_state(dp: object) -> None:
    """UP or DOWN, a cleartext packet of the tunnel never leaves: the guard does not ask
    the (daemon-written) state, which may be stale exactly when it matters."""
    table = dp.table  # type: ignore[attr-defined]
    frame = tr.tcp(NETS[4].c, NETS[4].s, 40000, 80, "A")
    for up in (True, False):
        table.set_tunnel(TUN, up=up)
        assert prog_test_run(dp.prog_fd(PROG_WAN_OUT), frame).retval == TC_ACT_SHOT  # type: ignore[attr-defined]
    assert table.guard_counts()[TUN] == (2, 0)


def test_guard_reports_once_per_interval(dp: object) -> None:
    """Drops are counted exactly; the ring buffer gets one sample per tunnel, direction and
    event interval, so a leak at line rate cannot flood user space."""
    table = dp.table  # type: ignore[attr-defined]
    table.read_events()
    frame = tr.udp(NETS[4].c, NETS[4].s, 40000, 53, b"x")
    prog_test_run(dp.prog_fd(PROG_WAN_OUT), frame, repeat=1000)  # type: ignore[attr-defined]
    prog_test_run(dp.prog_fd(PROG_WAN_IN),  # type: ignore[attr-defined]
                tr.udp(NETS[4].s, NETS[4].c, 53, 40000, b"x"))
    events = table.read_events()
    assert [(e.type, e.tunnel_id) for e in events] == [("GUARD_OUT", TUN), ("GUARD_IN", TUN)]
    assert str(events[0].key.addr[0]) == NETS[4].c and str(events[0].key.addr[1]) == NETS[4].s
    assert table.guard_counts()[TUN] == (1000, 1)
