"""Removed-flow records wake no reader of the ring buffer; the rare events do.

A record submitted while the reader has caught up wakes it (an irq_work: a self-IPI, on a
VM an exit) unless it says BPF_RB_NO_WAKEUP. Removed-flow records come at the gateway's
rate of short connections and the daemon reads them on its loop's tick, so they say it
(events.h); demand, table-full and WAN-guard events keep their wakeups. The witness is an
epoll on the ring's fd, which a wakeup puts on epoll's ready list: registered while the
ring is empty, it must stay quiet through a removed-flow record and report the demand
event that follows."""

from __future__ import annotations

import select
from typing import Any

from lab import packets as tr
from tests.datapath.cases import NET4, TUN, bump, down, handshake, out, run_steps

C_PORT, S_PORT = 40000, 80


def test_a_removed_flow_record_wakes_no_reader_and_a_demand_event_does(dp: Any) -> None:
    t, n = dp.table, NET4
    run_steps(dp, handshake(n, C_PORT, S_PORT))
    t.read_events(0)  # the ring is empty: the reader has caught up
    ep = select.epoll()
    try:
        ep.register(t.bpf[b"fp_events"].map_fd, select.EPOLLIN)
        assert ep.poll(0) == []
        # the flow's tunnel torn down by generation: its next segment removes it
        run_steps(dp, [bump(), out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001),
                                   "DROP_STALE")])
        assert ep.poll(0.2) == [], "a removed-flow record woke the ring's reader"
        assert [e.type for e in t.read_events(0)] == ["FLOW_REMOVED"]  # yet it is there
        run_steps(dp, [down(TUN), out(tr.tcp(n.c, n.s, C_PORT + 1, S_PORT, "S", seq=1),
                                      "DROP_TUNNEL_DOWN")])
        assert ep.poll(1.0), "a demand event did not wake the ring's reader"
        assert [e.type for e in t.read_events(0)] == ["DEMAND"]
    finally:
        ep.close()
