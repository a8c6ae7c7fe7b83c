"""Per-tunnel flow counts kept by the sweeper's pass (controlplane.flow_counts), on the
real maps with packets through the real programs (BPF_PROG_TEST_RUN).

Rows: description, steps, then what the counts of tunnel TUN must be after one sweep
(flows, held, tcp) -- and in every row the counts equal what decoding the whole table
finds (the slow way they replace), bytes by direction included.
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.flow_counts import TunnelCounts
from controlplane.sweeper import Sweeper
from lab import packets as tr
from tests.datapath.cases import (
    NET4,
    NET6,
    TUN,
    Act,
    Net,
    advance,
    bump,
    down,
    handshake,
    inb,
    out,
    run_steps,
    up,
)

pytestmark = pytest.mark.bpf


def _udp(n: Net, port: int = 5000) -> list[Any]:
    return [out(tr.udp(n.c, n.s, port, 53, payload=b"q" * 20), "PASS_NEW"),
            inb(tr.udp(n.s, n.c, 53, port, payload=b"a" * 60), "PASS_FLOW")]


def _nonvpn(n: Net) -> list[Any]:
    return [out(tr.tcp(n.c, n.n, 1000, 443, "A", seq=1, ack=1), "PASS_NONVPN")]


def _clear_udp(t: Any) -> None:  # as `clear conn protocol udp` deletes it
    assert t.delete_flow(next(f for f in t.flows() if f.key.proto == 17).key)


def _sweep(dp: Any) -> Act:
    return Act("sweep", lambda t: dp.sweeper.sweep())


# (description, steps, flows, held, tcp)
ROWS: list[tuple[str, Any, int, int, int]] = [
    ("inserted: a TCP and a UDP flow", lambda n, dp: handshake(n) + _udp(n), 2, 0, 1),
    ("removed behind the sweeper's back (clear conn)", lambda n, dp: handshake(n) + _udp(n)
     + [Act("clear udp", _clear_udp)], 1, 0, 1),
    ("tunnel down, preserving: TCP held, UDP torn down", lambda n, dp: handshake(n) + _udp(n)
     + [down()], 1, 1, 1),
    ("resumed: held again counted as flows, not held", lambda n, dp: handshake(n) + _udp(n)
     + [down(), _sweep(dp), up()], 1, 0, 1),
    ("expired by the sweeper: UDP after 2 min", lambda n, dp: handshake(n) + _udp(n)
     + [advance(120)], 1, 0, 1),
    ("non-VPN flows are not the tunnel's", lambda n, dp: handshake(n) + _nonvpn(n), 1, 0, 1),
]


def _decoded(t: Any, tid: int) -> TunnelCounts:
    """The same counts the slow way: every flow decoded."""
    tun = t.tunnel(tid)
    mine = [f for f in t.flows() if f.tunnel_id == tid and f.generation == tun.generation]
    tcp = sum(1 for f in mine if f.key.proto == 6)
    out_b = sum(f.bytes[f.lan_side if f.lan_side is not None else f.initiator] for f in mine)
    in_b = sum(f.bytes[1 - (f.lan_side if f.lan_side is not None else f.initiator)]
               for f in mine)
    held = tcp if not tun.up and tun.preserve else 0
    return TunnelCounts(len(mine), held, tcp, out_b, in_b)


@pytest.fixture
def swept(dp: Any) -> Any:
    dp.sweeper = Sweeper(dp.table)
    yield dp
    del dp.sweeper


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
@pytest.mark.parametrize(("desc", "steps", "flows", "held", "tcp"), ROWS,
                         ids=[r[0] for r in ROWS])
def test_counts_follow_the_table(swept: Any, net: Net, desc: str, steps: Any, flows: int,
                                 held: int, tcp: int) -> None:
    t = swept.table
    run_steps(swept, steps(net, swept))
    swept.sweeper.sweep()
    c = swept.sweeper.counts.tunnel(t.tunnel(TUN), TUN)
    assert (c.flows, c.held, c.tcp) == (flows, held, tcp)
    assert c == _decoded(t, TUN)
    assert c.bytes_out > 0 and c.bytes_in > 0
    assert swept.sweeper.counts.total == t.flow_count()
    assert swept.sweeper.counts.at > 0


def test_a_teardown_reads_as_no_flows_before_any_sweep(swept: Any) -> None:
    """Counts are kept by generation: a new generation has none, at once."""
    t = swept.table
    run_steps(swept, [bump()] + handshake(NET4) + _udp(NET4))  # flows of generation 1
    swept.sweeper.sweep()
    assert swept.sweeper.counts.tunnel(t.tunnel(TUN), TUN).flows == 2
    run_steps(swept, [bump()])
    assert swept.sweeper.counts.tunnel(t.tunnel(TUN), TUN) == TunnelCounts()
    assert swept.sweeper.counts.total == 2  # still in the table until the sweep
    swept.sweeper.sweep()
    assert swept.sweeper.counts.total == 0


def test_a_flow_refreshed_during_the_sweep_is_still_counted(swept: Any) -> None:
    """A candidate the re-check keeps (a packet came between read and delete) counts."""
    n = NET4
    run_steps(swept, handshake(n) + [advance(3600)])
    sw = swept.sweeper
    orig = sw.table.chunks

    def read_then_packet(fam: int, chunk: int = 4096) -> Any:
        for batch in orig(fam, chunk):
            if fam == 4:  # after the read, before the sweeper's re-check
                run_steps(swept, [out(tr.tcp(n.c, n.s, 40000, 80, "A", seq=1, ack=1),
                                     "PASS_FLOW")])
            yield batch

    sw.table.chunks = read_then_packet  # type: ignore[method-assign]
    try:
        assert sw.sweep() == []
    finally:
        del sw.table.chunks
    assert sw.last_stats["kept_changed"] == 1
    c = sw.counts.tunnel(swept.table.tunnel(TUN), TUN)
    assert (c.flows, c.tcp) == (1, 1)
    assert sw.counts.total == 1


def test_nonvpn_flows_count_over_every_generation_of_tunnel_zero(swept: Any) -> None:
    """Tunnel 0's generation moves on every selector change; its flows stay flows."""
    t = swept.table
    run_steps(swept, _nonvpn(NET4) + [bump(0)])
    swept.sweeper.sweep()
    assert swept.sweeper.counts.tunnel(t.tunnel(0), 0).flows == 1


def test_tcp_activity_of_one_tunnel_reads_the_raw_table(dp: Any) -> None:
    """The resume report's count: the tunnel's TCP flows, and those forwarded since UP."""
    t = dp.table
    n = NET4
    run_steps(dp, handshake(n) + _udp(n) + _nonvpn(n) + [advance(10)])
    since = t.config().now_ns // 10**9 - 5
    run_steps(dp, handshake(n, sport=40001))
    assert t.tcp_activity(TUN, since) == (2, 1)
    assert t.tcp_activity(TUN + 1, since) == (0, 0)
    flows = [f for f in t.flows() if f.tunnel_id == TUN and f.key.proto == 6]
    assert (len(flows), sum(f.last_s >= since for f in flows)) == (2, 1)  # decoded: same
