"""The WAN witness, on whichever backend this kernel gives: it counts what crosses the wire.

Two plain strongSwan gateways, no flowpin. With the tunnel up, pings both ways are ESP on
the WAN and nothing is a leak -- under kernel-netlink (XFRM) each decrypted packet re-enters
the stack on wan0, and a capture of both directions there counts it as cleartext. With the
tunnel down (no trap policy: the gateways route the far LAN in clear, as an ISP default
route would) the same pings are real leaks, and the witness must see them, from each
gateway that sent them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from lab.capture import WanCapture
from lab.lab import Lab
from lab.topology import BO_GW, CONN, GATEWAYS, HO_GW
from tests.conftest import lab_up
from vici_glue import session as vs

pytestmark = pytest.mark.lab

FAMILIES = {"ipv4": ("10.1.0.10", "10.2.0.10", 1), "ipv6": ("fd01::10", "fd02::10", 58)}


@pytest.fixture(scope="module")
def bare() -> Iterator[Lab]:
    with lab_up("wit", daemons=False) as lab:
        yield lab


def ping(lab: Lab, dst: str) -> subprocess.CompletedProcess:
    return lab.exec("bo-client", ["ping", "-c", "5", "-i", "0.2", "-W", "2", dst],
                    stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_tunnel_up_nothing_counts_as_a_leak(bare: Lab, family: str) -> None:
    assert bare.flowpin_gateways() == [] and bare.daemon_pid(BO_GW) is None
    _client, server, _proto = FAMILIES[family]
    with WanCapture(bare) as cap:
        r = ping(bare, server)
    assert r.returncode == 0, r.stdout
    assert cap.summary.leaks == [], (bare.meta()["backend"], cap.summary.as_dict())
    # Requests went out of bo-gw, replies out of ho-gw: both as ESP.
    for gw in GATEWAYS:
        assert cap.by_sender[gw].esp >= 5, (gw, cap.by_sender[gw].as_dict())


def test_tunnel_down_cleartext_is_seen_from_each_gateway(bare: Lab) -> None:
    with bare.vici(BO_GW) as s:
        vs.terminate(s, ike=CONN)
    deadline = time.monotonic() + 15
    while any(bare.child_installed(gw) for gw in GATEWAYS):
        assert time.monotonic() < deadline, "the CHILD_SAs did not go"
        time.sleep(0.2)
    try:
        with WanCapture(bare) as cap:
            replies = {family: ping(bare, FAMILIES[family][1]) for family in FAMILIES}
        for family, r in replies.items():
            assert r.returncode == 0, (family, r.stdout)  # routed, in clear
        for client, server, proto in FAMILIES.values():
            sent = f"{client} > {server} proto {proto}"
            back = f"{server} > {client} proto {proto}"
            seen = {gw: part.as_dict() for gw, part in cap.by_sender.items()}
            # (a leak's description names the ICMP type after the protocol)
            assert sum(x.startswith(sent) for x in cap.by_sender[BO_GW].leaks) == 5, \
                (seen, replies)
            assert sum(x.startswith(back) for x in cap.by_sender[HO_GW].leaks) == 5, \
                (seen, replies)
        assert len(cap.summary.leaks) == 20 and cap.summary.esp == 0, cap.summary.as_dict()
    finally:
        bare.bring_up(BO_GW)
