"""reclassify-vpn: a flow that began in cleartext is cleared when a tunnel covering it
comes up, from flowpin's flow table and from netfilter conntrack."""

from __future__ import annotations

import ipaddress
import sys
import time

import pytest

from lab import netns, nft
from lab.flap import wan_block
from lab.lab import Lab
from lab.topology import CHILD
from tests.conftest import require_lab_prerequisites, unique_lab_name
from vici_glue import session as vs

pytestmark = pytest.mark.lab

SEND_UDP = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind(('10.1.0.10', 40404)); s.sendto(b'x' * 100, ('10.2.0.10', 40405))")


def conntrack_pairs() -> list[tuple[str, str]]:
    """Runs inside bo-gw: (src, dst) of every conntrack entry (pyroute2, a witness)."""
    from pyroute2 import Conntrack

    with Conntrack() as ct:
        return [(str(e.tuple_orig.saddr), str(e.tuple_orig.daddr)) for e in ct.dump_entries()]


def cleartext_flows(lab: Lab) -> list[dict]:
    return [c for c in lab.ask("bo-gw", "show-conn")["connections"]
            if c["tunnel_id"] == 0 and c["inside"]["address"] == "10.1.0.10"
            and c["outside"]["address"] == "10.2.0.10"]


def test_cleartext_flow_is_reclassified_when_tunnel_comes_up() -> None:
    require_lab_prerequisites()
    lab = Lab(unique_lab_name("recl"))
    lab.up(load_conns=False, preserve=True)
    try:
        # Netfilter conntrack tracks what bo-gw forwards (as a stateful ruleset would).
        err = nft.apply_in(lab.ns("bo-gw"), [
            "add table inet fptest",
            "add chain inet fptest fchain { type filter hook forward priority 0; }",
            "add rule inet fptest fchain ct state established,related accept"])
        assert not err
        # No tunnel is configured yet: the flow goes in cleartext, tracked as non-VPN.
        assert lab.exec("bo-client", [sys.executable, "-c", SEND_UDP]).returncode == 0
        time.sleep(0.5)
        assert cleartext_flows(lab), lab.ask("bo-gw", "show-conn")
        assert ("10.1.0.10", "10.2.0.10") in netns.call(lab.ns("bo-gw"), conntrack_pairs)

        for gw in ("bo-gw", "ho-gw"):
            lab.load_conn(gw)
        lab.bring_up("bo-gw")
        lab.wait_daemon_sees_up("bo-gw")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and cleartext_flows(lab):
            time.sleep(0.1)
        assert cleartext_flows(lab) == []
        assert ("10.1.0.10", "10.2.0.10") not in netns.call(lab.ns("bo-gw"), conntrack_pairs)
        log = lab.daemon_log("bo-gw").read_text()
        assert "%FLOWPIN-6-752106: reclassify-vpn: Tunnel site/lan UP: 1 non-VPN flows" in log

        # The next packet of that conversation is classified into the tunnel.
        assert lab.exec("bo-client", [sys.executable, "-c", SEND_UDP]).returncode == 0
        time.sleep(0.5)
        flows = [c for c in lab.ask("bo-gw", "show-conn")["connections"]
                 if c["protocol"] == "UDP" and c["outside"]["port"] == 40405]
        assert [c["tunnel"] for c in flows] == ["site/lan"]
        assert ipaddress.ip_address(flows[0]["outside"]["address"]) in ipaddress.ip_network(
            "10.2.0.0/24")
    finally:
        lab.down()


def _udp_flows(lab: Lab) -> list[dict]:
    return [c for c in lab.ask("bo-gw", "show-conn")["connections"]
            if c["protocol"] == "UDP" and c["outside"]["port"] == 40405]


def _counter(lab: Lab, name: str) -> int:
    return int(lab.ask("bo-gw", "show-counters")["datapath"][name])


def test_reclassify_off_a_cleartext_flow_never_passes_while_its_tunnel_is_down() -> None:
    """reclassify-vpn off keeps a flow that began in cleartext (it is not cut), but once a
    tunnel covers it the flow follows that tunnel: refused by bo-gw's LAN-side data path
    while the tunnel is down, instead of passing on as non-VPN traffic."""
    require_lab_prerequisites()
    lab = Lab(unique_lab_name("recl0"))
    lab.up(load_conns=False, preserve=True)
    try:
        lab.ask("bo-gw", "sysopt", {"option": "reclassify-vpn", "on": False})
        assert lab.exec("bo-client", [sys.executable, "-c", SEND_UDP]).returncode == 0
        time.sleep(0.5)
        assert [c["tunnel_id"] for c in _udp_flows(lab)] == [0]

        for gw in ("bo-gw", "ho-gw"):
            lab.load_conn(gw)
        lab.bring_up("bo-gw")
        lab.wait_daemon_sees_up("bo-gw")
        # Not cleared (reclassify-vpn off): its next packet binds it to the tunnel as it is.
        assert lab.exec("bo-client", [sys.executable, "-c", SEND_UDP]).returncode == 0
        time.sleep(0.5)
        assert [c["tunnel"] for c in _udp_flows(lab)] == ["site/lan"]
        assert "752106" not in lab.daemon_log("bo-gw").read_text()

        wan_block(lab, "bo-gw", True)  # the tunnel stays down: demand cannot bring it back
        try:
            with lab.vici("bo-gw") as s:
                vs.terminate(s, child=CHILD)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                    t["state"] == "UP" for t in lab.ask("bo-gw", "show-vpn-context")["tunnels"]):
                time.sleep(0.05)
            refused = _counter(lab, "DROP_TUNNEL_DOWN")
            passed = _counter(lab, "PASS_NONVPN")
            assert lab.exec("bo-client", [sys.executable, "-c", SEND_UDP]).returncode == 0
            time.sleep(0.5)
            assert _counter(lab, "DROP_TUNNEL_DOWN") == refused + 1
            assert _counter(lab, "PASS_NONVPN") == passed
            assert _udp_flows(lab) == []
        finally:
            wan_block(lab, "bo-gw", False)
    finally:
        lab.down()
