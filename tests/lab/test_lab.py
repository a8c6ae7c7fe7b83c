"""The lab, for real: two charons negotiate IKEv2 and carry ESP between the LANs."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from lab import topology
from lab.capture import WanCapture
from lab.flap import flap
from lab.traffic import Transfer
from vici_glue import session as vs

pytestmark = pytest.mark.lab

FAMILIES = {"ipv4": "10.2.0.10", "ipv6": "fd02::10"}


def test_tunnel_established_over_vici(lab: Any) -> None:
    for gw in topology.GATEWAYS:
        with lab.vici(gw) as s:
            sas = vs.list_sas(s)
        assert [sa["state"] for name, sa in sas if name == "site"] == ["ESTABLISHED"]
        (child,) = vs.installed_children(sas, "site", "lan")
        assert set(child["local-ts"]) == set(topology.LOCAL_TS[gw])
        assert set(child["remote-ts"]) == set(topology.LOCAL_TS[topology.PEER[gw]])
    st = lab.status()
    assert st["backend"] in ("kernel-libipsec", "kernel-netlink")
    assert [g["child_state"] for g in st["gateways"]] == ["INSTALLED", "INSTALLED"]


@pytest.mark.parametrize("family", FAMILIES)
def test_ping_crosses_tunnel(lab: Any, family: str) -> None:
    r = lab.exec("bo-client", ["ping", "-c", "2", "-i", "0.2", "-W", "2", FAMILIES[family]],
                 stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_tcp_transfer_encrypted_on_the_wan(lab: Any, family: str) -> None:
    with WanCapture(lab) as cap:
        sent, got = Transfer(lab, FAMILIES[family], 4 << 20, port=5101).wait()
    assert sent["bytes"] == got["bytes"] == 4 << 20
    assert sent["sha256"] == got["sha256"]
    # tcpdump is the witness: ESP crossed the WAN, nothing of the LANs in clear.
    assert cap.summary.esp > 100, cap.summary.as_dict()
    assert cap.summary.leaks == []


def test_exec_returns_exit_code(lab: Any) -> None:
    assert lab.exec("ho-server", ["sh", "-c", "exit 7"]).returncode == 7
    r = lab.exec("bo-gw", ["cat", "/proc/sys/net/ipv4/ip_forward"], stdout=subprocess.PIPE,
                 text=True)
    assert r.stdout.strip() == "1"


@pytest.mark.parametrize("how", ["child", "ike", "dpd", "restart-charon"])
@pytest.mark.parametrize("gw", ["bo-gw", "ho-gw"])
def test_flap_takes_tunnel_down_and_back(lab: Any, how: str, gw: str) -> None:
    res = flap(lab, how, 1.0, gw=gw)
    assert res.sa_gone_at >= res.down_at and res.up_at > res.restored_at
    for g in topology.GATEWAYS:
        assert lab.child_installed(g), f"{g} has no CHILD_SA after {how} flap"
        # The kernel holds the SAs of the installed CHILD_SA (in and out) and no others:
        # nothing a killed charon left behind (kernel-libipsec: none, ESP is in charon).
        xfrm = lab.exec(g, ["ip", "xfrm", "state"], stdout=subprocess.PIPE, text=True).stdout
        states = [ln for ln in xfrm.splitlines() if ln.startswith("src ")]
        expected = 2 * len(lab.child_installed(g)) \
            if lab.meta()["backend"] == "kernel-netlink" else 0
        assert len(states) == expected, (g, xfrm)
    r = lab.exec("bo-client", ["ping", "-c", "1", "-W", "2", "10.2.0.10"],
                 stdout=subprocess.DEVNULL)
    assert r.returncode == 0


def test_flap_really_takes_it_down(lab: Any) -> None:
    """During a DPD outage, traffic stops and no SA is left on the flapped gateway."""
    import threading

    seen: dict[str, Any] = {}

    def watch() -> None:
        import time

        time.sleep(0.5)
        seen["ping"] = lab.exec("bo-client", ["ping", "-c", "1", "-W", "1", "10.2.0.10"],
                                stdout=subprocess.DEVNULL).returncode

    t = threading.Thread(target=watch)
    t.start()
    res = flap(lab, "dpd", 2.0)
    t.join()
    assert seen["ping"] != 0  # the WAN dropped ESP
    assert res.sa_gone_at - res.down_at > 1.0  # DPD needed retransmits to give up
