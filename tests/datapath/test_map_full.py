"""A full flow table refuses new flows (never evicts), counts and reports it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controlplane import testrun as tr
from tests.datapath.cases import (
    BASE_CLOCK_S,
    NET4,
    NET6,
    TUN,
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
