"""A LAN host's ACK scan does not starve new VPN flows: real charons, real daemons.

bo-gw's flow table is made small (64 IPv4 entries; the non-VPN budget, 50 %, is 32). A
scan of 400 ports from bo-client to a non-VPN address would fill it; after the scan a
TCP transfer from bo-client to ho-server through the tunnel must still open and
complete byte-exact, and the daemon must have said why the scan went untracked.
"""

from __future__ import annotations

import sys
import time

import pytest

from lab.lab import Lab
from lab.traffic import Transfer
from tests.conftest import require_lab_prerequisites, unique_lab_name

pytestmark = pytest.mark.lab

TABLE = 64
PROBES = 400
# Bare ACKs to ports 1..PROBES of ho-gw's WAN address (not covered by any selector), from
# a raw socket: every probe is a new non-VPN flow that bo-gw picks up mid-stream.
SCAN = ("import socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)\n"
        f"for p in range(1, {PROBES + 1}):\n"
        "    s.sendto(struct.pack('!HHIIBBHHH', 40000, p, 1, 1, 5 << 4, 0x10, 1024, 0, 0),\n"
        "             ('192.0.2.2', 0))\n")


def test_an_ack_scan_leaves_new_vpn_flows_their_room() -> None:
    require_lab_prerequisites()
    lab = Lab(unique_lab_name("scan"))
    lab.up(daemon_options={"flow_table_size": TABLE})
    try:
        assert lab.exec("bo-client", [sys.executable, "-c", SCAN]).returncode == 0
        time.sleep(0.5)
        counters = lab.ask("bo-gw", "show-counters")
        assert counters["nonvpn"]["4"]["limit"] == TABLE // 2
        assert counters["nonvpn"]["4"]["flows"] <= TABLE // 2
        assert counters["datapath"]["NONVPN_UNTRACKED"] >= PROBES - TABLE // 2

        tr = Transfer(lab, "10.2.0.10", 200_000, port=5077, timeout=30)
        sent, got = tr.wait(timeout=60)
        assert "error" not in sent and "error" not in got, (sent, got)
        assert got["bytes"] == sent["bytes"] == 200_000
        assert got["sha256"] == sent["sha256"]
        assert lab.ask("bo-gw", "show-counters")["datapath"]["DROP_MAP_FULL"] == 0
        log = lab.daemon_log("bo-gw").read_text()
        assert "%FLOWPIN-4-752122: non-VPN flows at their budget (32 IPv4 flows" in log
    finally:
        lab.down()
