"""`flowpin bench datapath`'s cache-honest hit figure and its targets: the spread stream
really hits a different established flow on every packet (the kernel's verdict counters
say so), and the targets are judged as stated. Checks behaviour, never speed."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from bench import datapath as bd


def _result(hit: int, new: int, insert: int) -> dict[str, Any]:
    return {"above_empty_ns": {"established_hit_1m": hit, "new_flow": new},
            "calibration": {"htab_insert_new_key_ns": insert}}


@pytest.mark.parametrize(("hit", "new", "insert", "hit_met", "new_met"), [
    (50, 338, 278, True, True),     # both exactly at the limit: met
    (51, 339, 278, False, False),   # one ns over each: missed
    (43, 365, 278, True, False),    # the published run before the target was restated
])
def test_targets(hit: int, new: int, insert: int, hit_met: bool, new_met: bool) -> None:
    t = bd.targets(_result(hit, new, insert))
    assert t["established_hit_cached_1m"] == {"above_empty_ns": hit, "max_ns": 50,
                                              "met": hit_met}
    assert t["new_flow"] == {"above_empty_ns": new, "kernel_insert_ns": insert,
                             "margin_ns": 60, "max_ns": insert + 60, "met": new_met}


def test_llc_from_sysfs() -> None:
    c = bd.llc()
    assert c["level"] >= 2 and c["bytes"] >= 1 << 20 and c["shared_cpus"]


@pytest.mark.bpf
def test_spread_stream_hits_a_different_established_flow_per_packet() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (loads the data path)", pytrace=False)
    from bench.progs import compile_empty
    from controlplane.datapath import Datapath, DatapathConfig

    b, fd_empty = compile_empty()
    dp = Datapath(DatapathConfig(instance="bench-spread-test", pin=False, flows4_max=4096,
                                 flows6_max=64, tunnels_max=8, pickup_s=0)).load()
    try:
        t = dp.table
        t.add_selector(bd.TUN, "10.0.0.0/8", "10.0.0.0/8")
        t.set_tunnel(bd.TUN, up=True, preserve=True)
        bd.fill_flows(t, 3000, time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 10**9, 0)
        before = t.counters()
        # spread_hits raises unless every packet passed as an established hit
        res = bd.spread_hits(t, dp.prog_fd("fp_outbound"), fd_empty, 3000, 400, rounds=3)
        after = t.counters()
    finally:
        dp.close()
        b.cleanup()
    assert after["PASS_FLOW"] - before["PASS_FLOW"] == 2 * 400 * 3
    assert after["PASS_NEW"] == before["PASS_NEW"]
    assert not any(after[k] != before.get(k) for k in after if k.startswith("DROP_"))
    assert (res["flows"], res["packets_per_round"], res["rounds"]) == (3000, 400, 3)
    assert all(len(v) == 3 for v in res["per_round"].values())
    assert res["spread_ns"] > 0 and res["empty_ns"] > 0 and res["cached_ns"] > 0
    assert res["table_bytes"] > 0 and res["evicted_bytes"] >= res["llc"]["bytes"]


@pytest.mark.bpf
def test_conntrack_spread_hits_its_filled_entries_and_cleans_up() -> None:
    """Each stream's datagrams hit the entries the fill created (none added: the count is
    checked inside), conntrack saw exactly the 'on' streams, the global limits are back
    and the namespace is gone."""
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespace, nftables)", pytrace=False)
    from pathlib import Path

    from bench import ct_spread
    from lab import netns

    proc = Path("/proc/sys/net/netfilter")
    limits = {k: (proc / k).read_text() for k in ("nf_conntrack_max", "nf_conntrack_buckets")}
    res = ct_spread.run(3000, 500, 3, 64 << 20)
    assert (res["entries"], res["packets_per_round"], res["rounds"]) == (3000, 500, 3)
    assert set(res["path_ns"]) == {"on_cached", "on_spread", "off_cached", "off_spread"}
    assert all(len(v) == 3 and min(v) > 0 for v in res["per_round"].values())
    assert set(res["conntrack_ns"]) == {"cached", "spread"}
    assert res["hash_buckets"] >= 3000 and res["raised_for_run"] == {}
    assert {k: (proc / k).read_text() for k in limits} == limits
    assert not netns.exists(ct_spread.NS)


@pytest.mark.bpf
def test_new_flows_are_taken_beside_the_kernel_insert() -> None:
    """Every run of each round created its flow (new_flows raises otherwise), both
    streams have one figure per round, the target's two figures are the rounds' medians,
    and the process gets its CPU affinity back."""
    if os.geteuid() != 0:
        pytest.fail("needs root (loads the data path)", pytrace=False)
    import statistics

    from lab import packets as tr

    syn = tr.tcp(bd.CLIENT, bd.SERVER, bd.CPORT, bd.SPORT, "S", seq=1, ack=1, size=64)
    ack = tr.tcp(bd.CLIENT, bd.SERVER, bd.CPORT, bd.SPORT, "A", seq=1, ack=1, size=64)
    cpus = os.sched_getaffinity(0)
    res = bd.new_flows(syn, ack, 4000, rounds=2, chunks=4)  # each round compiles: 2 do
    assert os.sched_getaffinity(0) == cpus
    assert (res["rounds"], res["chunks"], res["runs"]) == (2, 4, 4000)
    runs = res["per_round"]
    assert set(runs) == {"new_flow", "insert"} and all(len(v) == 2 for v in runs.values())
    assert res["new_flow_ns"] == statistics.median(runs["new_flow"]) > 0
    assert res["insert_ns"] == statistics.median(runs["insert"]) > 0
    assert res["new_minus_insert_ns"] == statistics.median(
        [n - i for n, i in zip(runs["new_flow"], runs["insert"], strict=True)])
