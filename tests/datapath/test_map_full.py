"""A full flow table refuses new flows (never evicts), counts and reports it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lab import packets as tr
from tests.datapath.cases import (
    BASE_CLOCK_S,
    NET4,
    NET6,
    TUN,
    TUN2,
    EventIs,
    FlowIs,
    advance,
    out,
    reset_state,
    run_steps,
)
from tests.datapath.conftest import make_datapath

pytestmark = pytest.mark.bpf

TINY = 4


@pytest.fixture(scope="module")
def tiny() -> Iterator[Any]:
    """A data path compiled with a flow table of TINY entries per family."""
    dp = make_datapath(flows4_max=TINY, flows6_max=TINY)
    yield dp
    dp.close()


@pytest.fixture
def full_dp(tiny: Any) -> Any:
    reset_state(tiny.table)
    tiny.table.set_clock(BASE_CLOCK_S * 10**9)
    return tiny


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
def test_map_full_refuses_new_flows_and_keeps_the_old(full_dp: Any, net: Any) -> None:
    fill = [out(tr.tcp(net.c, net.s, 1000 + i, 80, "S"), "PASS_NEW") for i in range(TINY)]
    run_steps(full_dp, fill + [
        out(tr.tcp(net.c, net.s, 2000, 80, "S"), "DROP_MAP_FULL"),
        out(tr.udp(net.c, net.s, 2001, 53), "DROP_MAP_FULL"),
        EventIs("MAP_FULL", TUN, count=1),  # rate-limited: one per interval
        out(tr.tcp(net.c, net.n, 2002, 443, "S"), "PASS_NOTRACK_FULL"),  # non-VPN passes
        FlowIs((net.c, 2000), (net.s, 80), absent=True),
        # existing flows are intact and keep passing
        out(tr.tcp(net.c, net.s, 1000, 80, "A", seq=1, ack=1), "PASS_FLOW"),
        FlowIs((net.c, 1000), (net.s, 80), attrs={"pkts": (2, 0)}),
        advance(2),
        out(tr.tcp(net.c, net.s, 2000, 80, "S"), "DROP_MAP_FULL"),
        EventIs("MAP_FULL", TUN, count=2),  # the interval passed: reported again
    ])
    assert full_dp.table.tunnel(TUN).refused == 3


def test_map_full_teardown_frees_room_by_replacement(full_dp: Any) -> None:
    """A full table of stale flows: a SYN of the same tuple replaces its stale flow."""
    net = NET4
    fill = [out(tr.tcp(net.c, net.s, 1000 + i, 80, "S"), "PASS_NEW") for i in range(TINY)]
    run_steps(full_dp, fill)
    full_dp.table.bump_generation(TUN)
    run_steps(full_dp, [out(tr.tcp(net.c, net.s, 1000, 80, "S"), "PASS_NEW"),
                        FlowIs((net.c, 1000), (net.s, 80), attrs={"generation": 1})])


SMALL = 16  # a table a scan fills quickly; the budget (50 %) leaves 8 entries to VPN flows


@pytest.fixture(scope="module")
def small() -> Iterator[Any]:
    dp = make_datapath(flows4_max=SMALL, flows6_max=SMALL, nonvpn_percent=50)
    yield dp
    dp.close()


@pytest.fixture(scope="module")
def small_no_budget() -> Iterator[Any]:
    dp = make_datapath(flows4_max=SMALL, flows6_max=SMALL, nonvpn_percent=100)
    yield dp
    dp.close()


def _clean(dp: Any) -> Any:
    reset_state(dp.table)
    dp.table.set_clock(BASE_CLOCK_S * 10**9)
    return dp


def _ack_scan(net: Any, count: int, reason: str) -> list[Any]:
    """One LAN host probing ``count`` ports of a non-VPN remote with bare ACKs."""
    return [out(tr.tcp(net.c, net.n, 50000, 1 + i, "A", seq=1, ack=1), reason)
            for i in range(count)]


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
def test_an_ack_scan_cannot_starve_new_vpn_flows(small: Any, net: Any) -> None:
    dp = _clean(small)
    t = dp.table
    assert t.nonvpn_limit(net.family) == SMALL // 2
    run_steps(dp, _ack_scan(net, SMALL // 2, "PASS_NONVPN")
              + _ack_scan(net, 3 * SMALL, "PASS_NOTRACK_FULL")[SMALL // 2:] + [
        EventIs("NONVPN_BUDGET", 0, count=1),  # rate-limited: one per interval
        # the scan's packets beyond the budget still pass (untracked, judged afresh)
        out(tr.tcp(net.c, net.n, 50000, 1, "A", seq=1, ack=1), "PASS_NONVPN"),
    ] + [out(tr.tcp(net.c, net.s, 1000 + i, 80, "S"), "PASS_NEW") for i in range(SMALL // 2)]
        + [FlowIs((net.c, 1000), (net.s, 80), attrs={"tunnel_id": TUN})])
    assert t.counters()["NONVPN_UNTRACKED"] == 3 * SMALL - SMALL // 2
    assert t.nonvpn_flows(net.family) == SMALL // 2
    # beyond the budget, untracked non-VPN packets are still judged by the selectors
    t.add_selector(TUN, net.local, "0.0.0.0/0" if net.family == 4 else "::/0")
    t.set_tunnel(TUN, up=False)
    run_steps(dp, [out(tr.tcp(net.c, net.n, 50000, 99, "A", seq=1, ack=1),
                       "DROP_TUNNEL_DOWN")])


def test_without_a_budget_the_scan_starves_the_vpn(small_no_budget: Any) -> None:
    """What the budget prevents (and why the test above goes red without it)."""
    dp, net = _clean(small_no_budget), NET4
    assert dp.table.nonvpn_limit(4) == 0
    run_steps(dp, _ack_scan(net, SMALL, "PASS_NONVPN") + [
        out(tr.tcp(net.c, net.s, 1000, 80, "S"), "DROP_MAP_FULL")])


def test_the_budget_frees_up_as_the_sweeper_expires_the_scan(small: Any) -> None:
    from controlplane.sweeper import Sweeper

    dp, net = _clean(small), NET4
    run_steps(dp, _ack_scan(net, SMALL // 2, "PASS_NONVPN") + [
        out(tr.tcp(net.c, net.n, 60000, 443, "S"), "PASS_NOTRACK_FULL"),
        advance(30)])
    removed = Sweeper(dp.table).sweep()
    assert [r.reason for r in removed] == ["SYN Timeout"] * (SMALL // 2)
    run_steps(dp, [out(tr.tcp(net.c, net.n, 60000, 443, "S"), "PASS_NONVPN")])


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
def test_the_budget_count_follows_the_data_paths_own_changes(dp: Any, net: Any) -> None:
    """Created +1; replaced by a non-VPN flow 0; moved into a tunnel or removed -1 --
    without a sweep in between."""
    from tests.datapath.test_verdicts import _o_net

    t, fam = dp.table, net.family
    run_steps(dp, [out(tr.udp(net.o, net.s, 5000 + i, 53), "PASS_NONVPN") for i in range(4)]
              + [out(tr.tcp(net.c, net.n, 1, 2, "S"), "PASS_NONVPN"),
                 out(tr.tcp(net.c, net.n, 1, 2, "R"), "PASS_NONVPN"),
                 out(tr.tcp(net.c, net.n, 1, 2, "S"), "PASS_NONVPN")])  # SYN on closed
    assert t.nonvpn_flows(fam) == 5
    t.add_selector(TUN2, _o_net(net), net.remote)  # TUN2 is down: removed on the packet path
    run_steps(dp, [out(tr.udp(net.o, net.s, 5000, 53), "DROP_TUNNEL_DOWN")])
    assert t.nonvpn_flows(fam) == 4
    t.set_tunnel(TUN2, up=True)  # moved into the tunnel (reclassify-vpn on)
    run_steps(dp, [out(tr.udp(net.o, net.s, 5001, 53), "PASS_NEW")])
    assert t.nonvpn_flows(fam) == 3
    t.set_reclassify(False)  # bound to the tunnel as it is
    t.bump_generation(0)
    run_steps(dp, [out(tr.udp(net.o, net.s, 5002, 53), "PASS_FLOW")])
    assert t.nonvpn_flows(fam) == 2


def test_the_daemon_logs_counts_and_exports_the_budget(small: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import os
    import shutil

    from controlplane import commands
    from controlplane.config import Config
    from controlplane.daemon import Daemon
    from controlplane.metrics import render

    dp, net = _clean(small), NET4
    d = Daemon(Config(instance=f"fptest-nv{os.getpid()}"))
    try:
        d.use_datapath(dp)
        run_steps(dp, _ack_scan(net, SMALL // 2, "PASS_NONVPN")
                  + _ack_scan(net, SMALL, "PASS_NOTRACK_FULL")[SMALL // 2:])
        with caplog.at_level(logging.INFO, logger="flowpin"):
            for ev in dp.table.read_events():
                d.on_datapath_event(ev)
        assert d.stats["nonvpn_budget"] == 1
        [msg] = [r.getMessage() for r in caplog.records if "752122" in r.getMessage()]
        assert msg.startswith("%FLOWPIN-4-752122: non-VPN flows at their budget (8 IPv4")
        text = render(commands.metrics(d.snapshot(), {}))
        assert 'flowpin_nonvpn_flows{family="ipv4"} 8.0' in text
        assert 'flowpin_nonvpn_flow_limit{family="ipv4"} 8.0' in text
        assert "flowpin_nonvpn_untracked_packets_total 8.0" in text
        assert "flowpin_nonvpn_budget_events_total 1.0" in text
    finally:
        shutil.rmtree(d.state_dir, ignore_errors=True)
