"""The data path's clock: jiffies mapped to CLOCK_MONOTONIC, the coarse clock when not
calibrated, the test clock when set."""

from __future__ import annotations

import time
from typing import Any

import pytest

from controlplane.datapath import HZ_CANDIDATES, PROG_OUTBOUND
from controlplane.libbpf import prog_test_run
from lab import packets as tr
from tests.datapath.cases import NET4

pytestmark = pytest.mark.bpf


def _created_s(dp: Any, sport: int) -> int:
    prog_test_run(dp.prog_fd(PROG_OUTBOUND), tr.udp(NET4.c, NET4.s, sport, 53))
    [f] = [f for f in dp.table.flows(4) if f.key.port[0] == sport or f.key.port[1] == sport]
    return f.created_s


@pytest.mark.parametrize("calibrated", [True, False], ids=["jiffies", "coarse-ktime"])
def test_real_clock_is_clock_monotonic_seconds(dp: Any, calibrated: bool) -> None:
    dp.table.set_clock(0)
    if calibrated:
        assert dp.calibrate_clock(0.05) in HZ_CANDIDATES
    else:
        dp.table.update_config(ns_per_jiffy=0)
    try:
        mono = time.clock_gettime(time.CLOCK_MONOTONIC)
        assert abs(_created_s(dp, 6000) - mono) <= 1.5
    finally:
        dp.calibrate_clock(0.05)


def test_test_clock_overrides(dp: Any) -> None:
    dp.table.set_clock(123_456 * 10**9)
    assert _created_s(dp, 6001) == 123_456
