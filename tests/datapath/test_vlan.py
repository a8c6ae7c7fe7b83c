"""VLAN-tagged frames on a real LAN device are judged like untagged ones.

client ns -- veth c0/g0 -- gateway ns, with the data path on the gateway's g0. The
client writes 802.1Q and QinQ (802.1ad + 802.1Q) frames on c0 through an AF_PACKET
socket (this kernel has no 802.1Q devices: CONFIG_VLAN_8021Q is off, and the frames are
what such a device would send without offload).

What the program sees is the kernel's doing: the receive path moves the outer tag into
skb metadata (skb->vlan_present, "VLAN offload") before TC ingress, so a single tag
never reaches the program in the frame, while the inner tag of QinQ stays in it. Both
must be judged by their addresses: PASS while the covering tunnel is up, DROP while it
is down -- never PASS_NOT_IP. The witness is the data path's per-reason counters.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from controlplane.flow_types import Reason
from lab import packets as tr
from tests.datapath.conftest import make_datapath

pytestmark = pytest.mark.bpf

TUN = 1
REASONS = [r.name for r in Reason]
CLIENT, GATEWAY = "10.1.0.5", "10.1.0.1"
TAGS = {"dot1q": ((tr.ETH_P_8021Q, 20),),
        "qinq": ((tr.ETH_P_8021AD, 100), (tr.ETH_P_8021Q, 10))}


def _in_ns(name: str, fn: Any, *args: Any) -> Any:
    netns.pushns(name)
    try:
        return fn(*args)
    finally:
        netns.popns()


@pytest.fixture(scope="module")
def vlan_topo() -> Iterator[dict[str, Any]]:
    tag = f"{os.getpid() % 100000}"
    ns = {"c": f"fptest-vl{tag}c", "g": f"fptest-vl{tag}g"}
    dp = None
    try:
        for n in ns.values():
            netns.create(n)
        with IPRoute() as ipr:
            ipr.link("add", ifname=f"fpvc{tag}", kind="veth", peer={"ifname": f"fpvg{tag}"})
            for ifn, target, new in ((f"fpvc{tag}", ns["c"], "c0"), (f"fpvg{tag}", ns["g"], "g0")):
                ipr.link("set", index=ipr.link_lookup(ifname=ifn)[0], net_ns_fd=target)
                with IPRoute(netns=target) as nipr:
                    idx = nipr.link_lookup(ifname=ifn)[0]
                    nipr.link("set", index=idx, ifname=new)
                    nipr.link("set", index=idx, state="up")
        with IPRoute(netns=ns["g"]) as ipr:
            g_mac = ipr.get_links(ipr.link_lookup(ifname="g0")[0])[0].get_attr("IFLA_ADDRESS")
        dp = make_datapath(instance=f"fptest-vl{tag}")
        t = dp.table  # type: ignore[attr-defined]
        t.add_selector(TUN, f"{CLIENT}/32", f"{GATEWAY}/32")
        t.set_tunnel(TUN, up=True)
        dp.attach("g0", ns["g"])  # type: ignore[attr-defined]
        yield {"ns": ns, "dp": dp, "mac": bytes.fromhex(g_mac.replace(":", ""))}
    finally:
        if dp is not None:
            with contextlib.suppress(Exception):
                dp.detach()  # type: ignore[attr-defined]
            dp.close()  # type: ignore[attr-defined]
        for n in ns.values():
            if n in netns.listnetns():
                netns.remove(n)


def _write(frame: bytes) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with s:
        s.bind(("c0", 0))
        s.send(frame)


def _verdict(topo: dict[str, Any], frame: bytes) -> dict[str, int]:
    """Write ``frame`` on the client's c0; the verdict counters that moved on the
    gateway's g0."""
    t = topo["dp"].table
    frame = topo["mac"] + frame[6:]  # to the gateway's address: the frame is for it
    before = t.counters()
    _in_ns(topo["ns"]["c"], _write, frame)
    for _ in range(100):  # the veth hands it over at once; allow for a busy machine
        after = t.counters()
        moved = {k: after[k] - before[k] for k in REASONS if after[k] != before[k]}
        if moved:
            return moved
        with contextlib.suppress(Exception):
            os.sched_yield()
    return {}


@pytest.mark.parametrize("kind", list(TAGS))
def test_tagged_frames_are_judged_by_their_addresses(vlan_topo: dict[str, Any],
                                                     kind: str) -> None:
    t = vlan_topo["dp"].table
    t.clear_flows()
    t.set_tunnel(TUN, up=True)
    try:
        udp = tr.vlan(tr.udp(CLIENT, GATEWAY, 5000 + len(kind), 9, b"x"), *TAGS[kind])
        assert _verdict(vlan_topo, udp) == {"PASS_NEW": 1}
        assert _verdict(vlan_topo, udp) == {"PASS_FLOW": 1}
        t.set_tunnel(TUN, up=False)
        assert _verdict(vlan_topo, udp) == {"DROP_TUNNEL_DOWN": 1}
        syn = tr.vlan(tr.tcp(CLIENT, GATEWAY, 40000, 80, "S"), *TAGS[kind])
        assert _verdict(vlan_topo, syn) == {"DROP_TUNNEL_DOWN": 1}
    finally:
        t.set_tunnel(TUN, up=True)
