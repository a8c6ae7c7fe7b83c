"""Sweeper: expiry by idle time with ASA timeouts, teardown, records for the logs.

Rows: description, steps that build flows (packets / map actions), seconds the clock
advances, the reasons of the flows removed by one sweep (sorted).
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.durations import Timeouts
from controlplane.messages import teardown_line
from controlplane.sweeper import TORN_DOWN, Sweeper
from lab import packets as tr
from tests.datapath.cases import (
    NET4,
    NET6,
    TUN,
    Net,
    advance,
    bump,
    down,
    handshake,
    inb,
    out,
    pickup,
    run_steps,
)

pytestmark = pytest.mark.bpf

C_PORT, S_PORT = 40000, 80


def _fin_both(n: Net) -> list[Any]:
    return handshake(n) + [
        out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "FA", seq=1001, ack=5001), "PASS_FLOW"),
        inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "FA", seq=5001, ack=1002), "PASS_FLOW"),
    ]


def _held(n: Net) -> list[Any]:
    """Established, tunnel down, packets held for 50 minutes (they do not refresh)."""
    return handshake(n) + [down(), advance(3000),
                           out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001),
                               "DROP_HELD")]


ROWS: list[tuple[str, Any, int, list[str]]] = [
    ("established, idle just under conn timeout: kept", handshake, 3599, []),
    ("established, idle conn timeout: removed", handshake, 3600, ["conn-timeout"]),
    ("embryonic (SYN only) after 30 s", lambda n: [
        out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S"), "PASS_NEW")], 30, ["SYN Timeout"]),
    ("embryonic kept at 29 s", lambda n: [
        out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S"), "PASS_NEW")], 29, []),
    ("half-closed after 10 min", lambda n: handshake(n) + [
        out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "FA", seq=1001, ack=5001), "PASS_FLOW")],
     600, ["half-closed-timeout"]),
    ("closed by FINs after 10 s", _fin_both, 10, ["TCP FINs"]),
    ("closed by RST after 10 s", lambda n: handshake(n) + [
        inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "R", seq=5001), "PASS_FLOW")], 10, ["TCP Reset"]),
    ("UDP after 2 min", lambda n: [out(tr.udp(n.c, n.s, 5000, 53), "PASS_NEW")], 120,
     ["udp-timeout"]),
    ("UDP kept at 119 s", lambda n: [out(tr.udp(n.c, n.s, 5000, 53), "PASS_NEW")], 119, []),
    ("ICMP echo after 2 s", lambda n: [out(tr.icmp_echo(n.c, n.s, 5), "PASS_NEW")], 2,
     ["icmp-timeout"]),
    ("stale generation: removed at once", lambda n: handshake(n) + [bump()], 0, [TORN_DOWN]),
    ("UDP of a down tunnel: torn down at once (never preserved)", lambda n: [
        out(tr.udp(n.c, n.s, 5000, 53), "PASS_NEW"), down()], 0, [TORN_DOWN]),
    ("held TCP flow: kept while within the idle timeout", _held, 599, []),
    ("held TCP flow: expires by conn timeout from last forwarded", _held, 600,
     ["conn-timeout"]),
    ("non-VPN flows expire too", lambda n: [
        out(tr.tcp(n.c, n.n, C_PORT, 443, "A", seq=1, ack=1), "PASS_NONVPN"),
        inb(tr.tcp(n.n, n.c, 443, C_PORT, "A", seq=1, ack=1), "PASS_NONVPN")], 3600,
     ["conn-timeout"]),
    ("non-VPN picked up, traffic both ways: kept like any connection", lambda n: [
        out(tr.tcp(n.c, n.n, C_PORT, 443, "A", seq=1, ack=1), "PASS_NONVPN"),
        inb(tr.tcp(n.n, n.c, 443, C_PORT, "A", seq=1, ack=1), "PASS_NONVPN")], 3599, []),
    # an ACK scan: every probe a picked-up flow that never hears back
    ("non-VPN picked up one way only: embryonic, gone after 30 s", lambda n: [
        out(tr.tcp(n.c, n.n, C_PORT, 443, "A", seq=1, ack=1), "PASS_NONVPN")], 30,
     ["SYN Timeout"]),
    ("non-VPN picked up one way only: kept at 29 s", lambda n: [
        out(tr.tcp(n.c, n.n, C_PORT, 443, "A", seq=1, ack=1), "PASS_NONVPN")], 29, []),
    ("non-VPN half-open (SYN only) after 30 s", lambda n: [
        out(tr.tcp(n.c, n.n, C_PORT, 443, "S", seq=1), "PASS_NONVPN")], 30, ["SYN Timeout"]),
    ("VPN flow picked up one way (pickup window): the conn timeout, it may be held", lambda n: [
        pickup(60, 10),
        out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1, ack=1), "PASS_PICKUP")], 3599, []),
    ("non-VPN flow after a selector change (tunnel 0's generation): not torn down",
     lambda n: [out(tr.udp(n.c, n.n, 5000, 53), "PASS_NONVPN"), bump(0)], 0, []),
]


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
@pytest.mark.parametrize(("desc", "steps", "idle", "reasons"), ROWS, ids=[r[0] for r in ROWS])
def test_sweep(dp: Any, net: Net, desc: str, steps: Any, idle: int,
               reasons: list[str]) -> None:
    run_steps(dp, steps(net) + [advance(idle)])
    before = dp.table.flow_count()
    removed = Sweeper(dp.table).sweep()
    assert sorted(r.reason for r in removed) == sorted(reasons)
    assert dp.table.flow_count() == before - len(removed)
    assert Sweeper(dp.table).sweep() == []  # nothing left to remove for the same reasons


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
def test_sweep_recounts_the_nonvpn_flows(dp: Any, net: Net) -> None:
    """The budget's count follows the table: the sweeper corrects drift (here flows
    deleted behind the data path's back) and what it removes itself."""
    t, fam = dp.table, net.family
    run_steps(dp, [out(tr.tcp(net.c, net.n, 1000 + i, 443, "A", seq=1, ack=1), "PASS_NONVPN")
                   for i in range(5)] + [
        out(tr.udp(net.c, net.n, 5000, 53), "PASS_NONVPN"),
        inb(tr.udp(net.n, net.c, 53, 5000), "PASS_NONVPN"),
        out(tr.tcp(net.c, net.s, C_PORT, S_PORT, "S"), "PASS_NEW"),  # VPN: not counted
    ])
    assert t.nonvpn_flows(fam) == 6
    udp = next(f for f in t.flows(fam) if f.key.proto == 17)
    assert t.delete_flow(udp.key)  # e.g. reclassify-vpn or `clear conn`
    assert t.nonvpn_flows(fam) == 6  # the data path did not see it go
    run_steps(dp, [advance(30)])
    removed = Sweeper(dp.table).sweep()
    assert sorted((r.reason, r.tunnel_id) for r in removed) == (
        [("SYN Timeout", 0)] * 5 + [("SYN Timeout", TUN)])
    assert t.nonvpn_flows(fam) == 0
    run_steps(dp, [out(tr.udp(net.c, net.n, 5001, 53), "PASS_NONVPN")])
    assert t.nonvpn_flows(fam) == 1


def test_removed_record_has_ends_duration_and_bytes(dp: Any) -> None:
    n = NET4
    run_steps(dp, handshake(n) + [
        out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "PA", seq=1001, ack=5001, payload=b"x" * 100),
            "PASS_FLOW"),
        advance(65), bump()])
    [r] = Sweeper(dp.table).sweep()
    assert r.reason == TORN_DOWN and r.tunnel_id == TUN and r.proto == 6
    assert (str(r.initiator[0]), r.initiator[1]) == (n.c, C_PORT)
    assert (str(r.responder[0]), r.responder[1]) == (n.s, S_PORT)
    assert r.packets == (3, 1)
    assert r.bytes == (54 + 54 + 154, 54)
    assert r.duration_s == 65
    line = teardown_line(r)
    assert "duration 0:01:05" in line and TORN_DOWN in line


def test_custom_timeouts(dp: Any) -> None:
    run_steps(dp, handshake(NET4) + [advance(300)])
    assert Sweeper(dp.table, Timeouts.parse(conn="0:05:01")).sweep() == []
    [r] = Sweeper(dp.table, Timeouts.parse(conn="0:05:00")).sweep()
    assert r.reason == "conn-timeout"


def test_packet_refresh_between_read_and_delete_keeps_the_flow(dp: Any) -> None:
    """A flow refreshed after the sweeper read it is re-checked and kept."""
    n = NET4
    run_steps(dp, handshake(n) + [advance(3600)])
    sw = Sweeper(dp.table)
    orig = sw.table.chunks

    def read_then_packet(fam: int, chunk: int = 4096) -> Any:
        for batch in orig(fam, chunk):
            if fam == 4:  # after the read, before the sweeper's re-check
                run_steps(dp, [out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1, ack=1),
                                     "PASS_FLOW")])
            yield batch

    sw.table.chunks = read_then_packet  # type: ignore[method-assign]
    try:
        assert sw.sweep() == []
        assert sw.last_stats["kept_changed"] == 1
    finally:
        del sw.table.chunks


def test_flows_removed_on_the_packet_path_are_reported(dp: Any) -> None:
    from controlplane.sweeper import removed_from_events

    n = NET6
    run_steps(dp, handshake(n) + [advance(7), bump(),
                                  out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1, ack=1),
                                      "DROP_STALE")])
    [r] = removed_from_events(dp.table.read_events())
    assert r.reason == TORN_DOWN and r.duration_s == 7 and r.packets == (2, 1)


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
def test_a_removed_flows_record_is_the_flow_the_map_held(dp: Any, net: Net) -> None:
    """The ring record of a flow removed on the packet path decodes (ring_events.py: one
    struct unpack) to the flow the map held, as the map's own decoder reads it: key (both
    addresses and ports in their places), tunnel, generation, sides, sequence numbers,
    times, packets and bytes each way. Asymmetric on purpose: every field differs between
    the two ends, so a swap shows."""
    from controlplane.sweeper import removed_from_events

    run_steps(dp, handshake(net) + [
        out(tr.tcp(net.c, net.s, C_PORT, S_PORT, "PA", seq=1, ack=1, payload=b"x" * 300),
            "PASS_FLOW"),
        advance(7), bump()])
    (held,) = dp.table.flows(net.family)
    run_steps(dp, [out(tr.tcp(net.c, net.s, C_PORT, S_PORT, "A", seq=301, ack=1),
                       "DROP_STALE")])
    (ev,) = [e for e in dp.table.read_events() if e.type == "FLOW_REMOVED"]
    assert (ev.tunnel_id, ev.key) == (held.tunnel_id, held.key)
    assert ev.flow == held
    assert held.bytes[0] != held.bytes[1] and held.seq[0] != held.seq[1]
    (r,) = removed_from_events([ev])
    assert f"{net.c}/{C_PORT}" in teardown_line(r) and f"{net.s}/{S_PORT}" in teardown_line(r)


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
def test_removed_flows_are_handed_on_a_batch_at_a_time_once_deleted(
        dp: Any, net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``on_removed`` (the daemon logs there), a sweep hands its removed flows on in
    batches of REMOVED_BATCH, each after its flows are gone from the map, and keeps no
    list of its own (a big teardown must not pile up for the garbage collector)."""
    from controlplane import sweeper as sweeper_mod

    monkeypatch.setattr(sweeper_mod, "REMOVED_BATCH", 2)
    t = dp.table
    run_steps(dp, [out(tr.udp(net.c, net.s, 5000 + i, 53), "PASS_NEW") for i in range(5)]
              + [advance(120)])
    batches: list[tuple[int, int]] = []  # (size, of its flows still in the map)

    def logged(removed: list[Any]) -> None:
        left = {f.key for f in t.flows(net.family)}
        batches.append((len(removed), sum(r.flow.key in left for r in removed)))

    assert Sweeper(t, on_removed=logged).sweep() == []
    assert batches == [(2, 0), (2, 0), (1, 0)]
    assert t.flow_count() == 0
