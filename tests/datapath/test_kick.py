"""The kick (bpf/lib/kick.h): a held TCP segment from the LAN is answered with an ICMP
unreachable to its sender, within a per-flow interval and a global budget, and that answer
passes the inbound hook on its way back; nothing else changes.

Each row: what is set up, the packet, and what must come out (return code, the answer's
bytes, the tunnel's kick counters).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest

from controlplane.flow_table import FlowTable
from controlplane.flow_types import TC_ACT_OK, TC_ACT_SHOT
from controlplane.libbpf import prog_test_run
from lab import packets as tr
from tests.datapath.cases import NETS, TUN, Net, down, handshake, run_steps, up

pytestmark = pytest.mark.bpf

TC_ACT_REDIRECT = 7
GW = {4: "10.1.0.1", 6: "fd00:1::1"}  # the gateway's LAN address: the kick's source
PAYLOAD = b"held bytes" * 100


def _kick_setup(t: FlowTable, *, interval_ms: int = 200, budget: int = 100,
                kick: bool = True) -> None:
    t.set_kick_config(src4=GW[4], src6=GW[6], interval_ms=interval_ms, budget=budget)
    t.set_kick(TUN, kick)
    for m in (t.bpf[b"fp_kick_last4"], t.bpf[b"fp_kick_last6"]):
        m.clear()
    k = t.kick_stats_map.Key(TUN)
    t.kick_stats_map[k] = t.kick_stats_map.Leaf()
    t.kick_budget_map[t.kick_budget_map.Key(0)] = t.kick_budget_map.Leaf()


def _segment(n: Net, sport: int = 40000, flags: str = "PA") -> bytes:
    return tr.tcp(n.c, n.s, sport, 80, flags, seq=1001, ack=5001, payload=PAYLOAD)


def _run(dp: Any, hook: str, frame: bytes) -> Any:
    from controlplane.datapath import PROG_INBOUND, PROG_OUTBOUND

    return prog_test_run(dp.prog_fd(PROG_OUTBOUND if hook == "out" else PROG_INBOUND), frame)


def _held_flow(dp: Any, n: Net, sport: int = 40000) -> None:
    run_steps(dp, handshake(n, sport=sport) + [down()])


def _check_answer(n: Net, sent: bytes, got: bytes) -> None:
    """``got`` is an ICMP unreachable from the gateway to the client quoting ``sent``."""
    assert got[:6] == sent[6:12] and got[6:12] == sent[:6], "MACs not swapped"
    ip_sent = tr.strip_ether(sent)
    if n.family == 4:
        assert got[12:14] == b"\x08\x00" and len(got) == 70
        ip = got[14:34]
        assert tr.ip_checksum(ip) == 0, "IPv4 header checksum"
        assert ipaddress.ip_address(ip[12:16]) == ipaddress.ip_address(GW[4])
        assert ipaddress.ip_address(ip[16:20]) == ipaddress.ip_address(n.c)
        assert ip[9] == 1 and struct.unpack("!H", ip[2:4])[0] == 56
        icmp = got[34:]
        assert icmp[0:2] == b"\x03\x01", "type 3 code 1 (host unreachable)"
        assert tr.ip_checksum(icmp) == 0, "ICMP checksum"
        assert icmp[8:] == ip_sent[:28], "quotes the IP header and 8 bytes"
    else:
        assert got[12:14] == b"\x86\xdd" and len(got) == 110
        ip = got[14:54]
        assert ipaddress.ip_address(ip[8:24]) == ipaddress.ip_address(GW[6])
        assert ipaddress.ip_address(ip[24:40]) == ipaddress.ip_address(n.c)
        assert ip[6] == 58 and struct.unpack("!H", ip[4:6])[0] == 56
        icmp = got[54:]
        assert icmp[0:2] == b"\x01\x00", "type 1 code 0 (no route: tcp_v6_err reverts)"
        pseudo = ip[8:40] + struct.pack("!II", 56, 58)
        assert tr.ip_checksum(pseudo + icmp) == 0, "ICMPv6 checksum"
        assert icmp[8:] == ip_sent[:48], "quotes the IPv6 header and 8 bytes"


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def n(request: pytest.FixtureRequest) -> Net:
    return NETS[request.param]


def test_held_segment_is_answered(dp: Any, n: Net) -> None:
    t: FlowTable = dp.table
    _kick_setup(t)
    _held_flow(dp, n)
    before = t.counters()["DROP_HELD"]
    seg = _segment(n)
    res = _run(dp, "out", seg)
    assert res.retval == TC_ACT_REDIRECT
    _check_answer(n, seg, res.data_out)
    assert t.kick_stats(TUN) == (1, 0)
    assert t.counters()["DROP_HELD"] == before + 1, "still counted as held"
    # the answer passes the inbound hook (the redirect sends it out of the LAN interface)
    assert _run(dp, "in", res.data_out).retval == TC_ACT_OK
    # an unreachable about the same held flow from anyone else is refused, as before
    other = tr.icmp_error(n.r, n.c, tr.strip_ether(seg))
    assert _run(dp, "in", other).retval == TC_ACT_SHOT


def test_per_flow_interval(dp: Any, n: Net) -> None:
    t: FlowTable = dp.table
    _kick_setup(t, interval_ms=200)
    _held_flow(dp, n)
    now = t.config().now_ns
    assert _run(dp, "out", _segment(n)).retval == TC_ACT_REDIRECT
    t.set_clock(now + 150_000_000)
    assert _run(dp, "out", _segment(n)).retval == TC_ACT_SHOT, "within 200 ms: dropped"
    t.set_clock(now + 250_000_000)
    assert _run(dp, "out", _segment(n)).retval == TC_ACT_REDIRECT
    assert t.kick_stats(TUN) == (2, 1)


def test_a_lost_revert_is_repaired_with_a_second_answer(dp: Any, n: Net) -> None:
    """A sender whose timer doubled without being reverted (it ignored an answer: its socket
    was owned by its application) retransmits after twice its usual gap: that segment is
    answered twice, so the doubling that was lost is undone too. Gaps as usual get one
    answer; a gap of another outage (10 s or more) starts a new history, whose first
    answer is a burst (the flow had been silent for 13 s: see the next test)."""
    t: FlowTable = dp.table
    _kick_setup(t, interval_ms=100)
    _held_flow(dp, n)
    now = t.config().now_ns
    rto = 220_000_000
    seen = []
    for at in (0, rto, 2 * rto, 4 * rto, 5 * rto, 5 * rto + 12_000_000_000,
               6 * rto + 12_000_000_000):
        t.set_clock(now + at)
        before = t.kick_stats(TUN)[0]
        assert _run(dp, "out", _segment(n)).retval == TC_ACT_REDIRECT
        seen.append(t.kick_stats(TUN)[0] - before)
    assert seen == [1, 1, 1, 2, 1, 7, 1], "two answers only after a doubled gap"
    assert t.kicks_sent(TUN)[1] == 1 + 6


@pytest.mark.parametrize(("silent_s", "answers"), [(0, 1), (1, 1), (2, 4), (6, 6), (13, 7),
                                                   (60, 8)])
def test_the_first_held_segment_after_a_silence_undoes_every_doubling(
        dp: Any, n: Net, silent_s: int, answers: int) -> None:
    """A DPD outage: until dead-peer detection deletes the SA, the sender's retransmissions
    go into the tunnel and are lost unanswered, so when its first segment is held it is
    several doublings deep. That segment is answered with one ICMP per doubling its silence
    can hold (base RTO >= 200 ms: 1 + log2(silence / 200 ms), the second rounded up, at
    most 8); a silence under 2 s gets one answer. Every later segment of the outage is
    answered as before."""
    t: FlowTable = dp.table
    _kick_setup(t, interval_ms=100)
    _held_flow(dp, n)  # the flow last passed now
    now = t.config().now_ns
    t.set_clock(now + silent_s * 1_000_000_000)
    assert _run(dp, "out", _segment(n)).retval == TC_ACT_REDIRECT
    assert t.kicks_sent(TUN) == (answers, answers - 1)
    t.set_clock(now + silent_s * 1_000_000_000 + 220_000_000)
    assert _run(dp, "out", _segment(n)).retval == TC_ACT_REDIRECT
    assert t.kicks_sent(TUN) == (answers + 1, answers - 1), "then one answer each"


def test_a_burst_stays_within_the_budget(dp: Any, n: Net) -> None:
    t: FlowTable = dp.table
    _kick_setup(t, interval_ms=100, budget=3)
    _held_flow(dp, n)
    t.set_clock(t.config().now_ns + 60 * 1_000_000_000)
    assert _run(dp, "out", _segment(n)).retval == TC_ACT_REDIRECT
    assert t.kicks_sent(TUN) == (3, 2), "the budget's 3, not the silence's 8"


def test_global_budget(dp: Any, n: Net) -> None:
    t: FlowTable = dp.table
    _kick_setup(t, budget=2)
    for sport in (40001, 40002, 40003):
        _held_flow(dp, n, sport) if sport == 40001 else run_steps(
            dp, [up()] + handshake(n, sport=sport) + [down()])
    got = [_run(dp, "out", _segment(n, sport)).retval for sport in (40001, 40002, 40003)]
    assert got == [TC_ACT_REDIRECT, TC_ACT_REDIRECT, TC_ACT_SHOT], "third over the budget"
    t.set_clock(t.config().now_ns + 1_000_000_000)
    assert _run(dp, "out", _segment(n, 40003)).retval == TC_ACT_REDIRECT, "next second"
    assert t.kick_stats(TUN) == (3, 1)


@pytest.mark.parametrize("what", ["kick off", "preserve off", "tunnel up", "RST",
                                  "inbound hook", "no source address"])
def test_not_answered(dp: Any, n: Net, what: str) -> None:
    t: FlowTable = dp.table
    _kick_setup(t, kick=what != "kick off")
    _held_flow(dp, n)
    seg, hook, want = _segment(n), "out", TC_ACT_SHOT
    if what == "preserve off":
        t.set_tunnel(TUN, preserve=False)
    elif what == "tunnel up":
        t.set_tunnel(TUN, up=True)
        want = TC_ACT_OK
    elif what == "RST":
        seg = _segment(n, flags="R")
    elif what == "inbound hook":
        seg, hook = tr.tcp(n.s, n.c, 80, 40000, "PA", seq=5001, ack=1001, payload=PAYLOAD), "in"
    elif what == "no source address":
        t.set_kick_config(src4=None, src6=None, interval_ms=200, budget=100)
    res = _run(dp, hook, seg)
    assert res.retval == want
    assert t.kick_stats(TUN)[0] == 0


def test_rate_limit_state_is_capped_and_the_budget_still_bounds() -> None:
    """More held flows than the per-flow state holds (FP_KICK_FLOWS_MAX, LRU): the state map
    never grows past its cap, every flow is still answered (a forgotten stamp costs at most
    an early kick, never a missed one), and the global budget alone bounds the total."""
    from tests.datapath.cases import BASE_CLOCK_S, reset_state
    from tests.datapath.conftest import make_datapath

    cap, flows = 64, 200
    dp: Any = make_datapath(instance="fptest-kickcap", cflags=[f"-DFP_KICK_FLOWS_MAX={cap}"])
    try:
        t: FlowTable = dp.table
        reset_state(t)
        t.set_clock(BASE_CLOCK_S * 10**9)
        _kick_setup(t, budget=150)
        n = NETS[4]
        steps: list[Any] = []
        for i in range(flows):
            steps += handshake(n, sport=20000 + i)
        run_steps(dp, steps + [down()])
        got = [_run(dp, "out", _segment(n, 20000 + i)).retval for i in range(flows)]
        assert got.count(TC_ACT_REDIRECT) == 150 and got.count(TC_ACT_SHOT) == 50, "budget"
        stamps = t.bpf[b"fp_kick_last4"]
        assert stamps.max_entries == cap
        assert len(list(stamps.keys())) <= cap
        t.set_clock(t.config().now_ns + 1_000_000_000)
        got = [_run(dp, "out", _segment(n, 20000 + i)).retval for i in range(150, flows)]
        assert got.count(TC_ACT_REDIRECT) == 50, "the flows over the budget, a second later"
        assert t.kick_stats(TUN) == (200, 50)
    finally:
        dp.close()
