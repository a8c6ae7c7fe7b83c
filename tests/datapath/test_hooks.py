"""Lost TC hooks are attached again within a second; L3 devices are refused at attach.

The data path is attached to a veth in a namespace of its own, in the suite's attach mode
(FLOWPIN_TEST_ATTACH). Another tool removes the hooks -- ``tc`` deletes the clsact qdisc or
a filter; ``bpftool`` detaches a tcx link -- and an independent witness reads them back
(``tc``; the kernel's list of programs on the tcx hook): see hook_witness. The interface is
also deleted and created again (a tcx link goes defunct).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from controlplane.datapath import Datapath, DatapathConfig, DatapathError
from controlplane.hooks import HookWatch
from lab import attach
from lab import hooks as hook_witness

pytestmark = pytest.mark.bpf

PREFIX = "fptest-hk-"


def tc_filters(ns: str, dev: str) -> dict[str, bool]:
    """Which of flowpin's LAN hooks the independent witness finds on ``dev``."""
    progs = hook_witness.hook_progs(ns, dev)
    return {hook: prog in progs[hook]
            for hook, prog in (("ingress", "fp_outbound"), ("egress", "fp_inbound"))}


def make_veth(ns: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname="v0", kind="veth", peer={"ifname": "v1"})
        for name in ("v0", "v1"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")


def wait_attached(ns: str, since: float, repaired: list[Any], timeout: float = 5.0) -> float:
    """Seconds from ``since`` until the watcher re-attached, once tc lists both filters
    again. (The time is taken by the watcher's callback: each tc run costs tens of ms on
    a loaded machine, which the witness must not add to the watcher's latency.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(tc_filters(ns, "v0").values()):
            # the witness may see them before the watcher's callback has run (it runs
            # once the attach has returned)
            settle = time.monotonic() + 1.0
            while True:
                done = [r[-1] for r in repaired if r[0] != "error" and r[-1] >= since]
                if done or time.monotonic() > settle:
                    break
                time.sleep(0.01)
            assert done, "filters back, but not by the watcher"
            return done[0] - since
        time.sleep(0.02)
    raise AssertionError(f"filters not back within {timeout} s: {tc_filters(ns, 'v0')}")


@pytest.fixture(scope="module")
def small_dp() -> Iterator[Datapath]:
    dp = Datapath(DatapathConfig(instance="fptest-hooks", pin=False, flows4_max=64,
                                 flows6_max=64, tunnels_max=8, btf=False,
                                 attach=attach.mode())).load()
    yield dp
    dp.close()


@pytest.fixture
def hooked(small_dp: Datapath) -> Iterator[tuple[str, Datapath, HookWatch, list[Any]]]:
    ns = f"{PREFIX}{os.getpid() % 100000}"
    if ns in netns.listnetns():
        netns.remove(ns)
    netns.create(ns)
    dp = small_dp
    repaired: list[Any] = []
    watch = None
    try:
        make_veth(ns)
        dp.attach("v0", netns=ns)
        watch = HookWatch(dp, lambda: [("v0", "lan")], netns=ns,
                          on_reattach=lambda *a: repaired.append((*a, time.monotonic())),
                          on_error=lambda *a: repaired.append(("error", *a))).start()
        yield ns, dp, watch, repaired
    finally:
        if watch:
            watch.stop()
        dp.attached.clear()
        netns.remove(ns)


def test_hooks_removed_by_another_tool_are_repaired_within_a_second(hooked: Any) -> None:
    ns, _dp, watch, repaired = hooked
    assert all(tc_filters(ns, "v0").values())
    time.sleep(0.6)
    assert watch.checks >= 1 and repaired == []  # nothing to repair: nothing done
    t0 = time.monotonic()
    hook_witness.remove(ns, "v0")
    # gone, as tc shows; or already repaired: on an emulated CPU (the XFRM VM under TCG)
    # one tc run takes longer than the watch takes to put them back
    assert not any(tc_filters(ns, "v0").values()) or repaired
    assert wait_attached(ns, t0, repaired) < 1.0
    assert repaired[0][:3] == ("v0", "lan", ["ingress", "egress"]) and watch.reattached == 1


def test_one_filter_deleted_is_repaired(hooked: Any) -> None:
    ns, _dp, watch, repaired = hooked
    t0 = time.monotonic()
    hook_witness.remove(ns, "v0", "egress")
    assert wait_attached(ns, t0, repaired) < 1.0
    assert repaired[0][:3] == ("v0", "lan", ["egress"])


def test_interface_recreated_is_attached_again(hooked: Any) -> None:
    ns, _dp, watch, repaired = hooked
    with IPRoute(netns=ns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname="v0")[0])
    time.sleep(1.2)  # the watcher notices it is gone, once
    assert [r for r in repaired if r[0] == "error"] == [
        ("error", "v0", "interface v0 is gone: its filters are attached again as soon as "
                        "it exists")]
    t0 = time.monotonic()
    make_veth(ns)
    assert wait_attached(ns, t0, repaired) < 1.0
    assert repaired[-1][:3] == ("v0", "lan", ["ingress", "egress"])


def test_l3_device_is_refused_at_attach(hooked: Any) -> None:
    ns, dp, _watch, _ = hooked
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname="tun7", kind="tuntap", mode="tun")
    with pytest.raises(DatapathError, match="interface 'tun7' is not an Ethernet device"):
        dp.attach("tun7", netns=ns)
    r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", "tun7"],
                       capture_output=True, text=True, timeout=10)
    assert "clsact" not in r.stdout  # refused before anything was attached


def test_the_wan_guard_is_watched_too(small_dp: Datapath) -> None:
    """The WAN guard is the last line of defence: if another tool removes it, it is back
    within a second as well."""
    ns = f"{PREFIX}w{os.getpid() % 100000}"
    if ns in netns.listnetns():
        netns.remove(ns)
    netns.create(ns)
    repaired: list[Any] = []
    watch = None
    try:
        make_veth(ns)
        small_dp.attach_wan("v0", netns=ns)
        watch = HookWatch(small_dp, lambda: [("v0", "wan")], netns=ns,
                          on_reattach=lambda *a: repaired.append((*a, time.monotonic()))
                          ).start()
        time.sleep(0.6)
        assert repaired == []
        t0 = time.monotonic()
        hook_witness.remove(ns, "v0")
        deadline = time.monotonic() + 5
        while not repaired and time.monotonic() < deadline:
            time.sleep(0.02)
        assert repaired and repaired[0][:3] == ("v0", "wan", ["egress", "ingress"])
        assert repaired[0][-1] - t0 < 1.0
        for hook, prog in (("egress", "fp_wan_out"), ("ingress", "fp_wan_in")):
            assert hook_witness.has(ns, "v0", hook, prog), hook_witness.hook_progs(ns, "v0")
    finally:
        if watch:
            watch.stop()
        small_dp.attached.clear()
        netns.remove(ns)
