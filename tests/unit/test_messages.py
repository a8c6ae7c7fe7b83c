"""Log lines in the ASA's form, from crafted flows."""

from __future__ import annotations

import ipaddress

import pytest

from controlplane.flow_table import Flow, FlowKey, Side
from controlplane.messages import teardown_line
from controlplane.metrics import render
from controlplane.sweeper import RemovedFlow


def flow(proto: int = 6) -> Flow:
    # Canonical key: endpoint 0 is the lower address. The LAN client 10.1.0.10 opened it.
    key = FlowKey(proto, (ipaddress.ip_address("10.1.0.10"), ipaddress.ip_address("10.2.0.10")),
                  (1135, 80))
    est = Side.SYN | Side.ACK
    return Flow(key, 1, 0, (est | Side.OPENER | Side.LAN, est), (0, 0), (0, 0), 100, 136,
                (10, 40), (1000, 52947))


@pytest.mark.parametrize(("proto", "prefix"), [
    (6, "%FLOWPIN-6-302014: Teardown TCP connection"),
    (17, "%FLOWPIN-6-302016: Teardown UDP connection"),
])
def test_teardown_line_like_the_asa(proto: int, prefix: str) -> None:
    r = RemovedFlow("Tunnel has been torn down", 36.0, decoded=flow(proto))
    line = teardown_line(r, lan_if="inside", tunnel_if="outside")
    assert line.startswith(prefix)
    # The responder (the far end) first, then the LAN end; bytes both ways.
    assert line.endswith(" for outside:10.2.0.10/80 to inside:10.1.0.10/1135 duration "
                         "0:00:36 bytes 53947 Tunnel has been torn down")


@pytest.mark.parametrize(("proto", "type_"), [(1, 8), (58, 128)])
def test_icmp_teardown_in_the_asa_s_302021_form(proto: int, type_: int) -> None:
    r = RemovedFlow("icmp-timeout", 2.0, decoded=flow(proto))
    assert teardown_line(r) == (
        "%FLOWPIN-6-302021: Teardown ICMP connection for faddr 10.2.0.10/0 gaddr "
        f"10.1.0.10/1135 laddr 10.1.0.10/1135 type {type_} code 0 duration 0:00:02 bytes "
        "53947 icmp-timeout")


def test_connection_id_is_stable() -> None:
    a = teardown_line(RemovedFlow("conn-timeout", 1.0, decoded=flow()))
    b = teardown_line(RemovedFlow("conn-timeout", 1.0, decoded=flow()))
    assert a.split()[4] == b.split()[4] and a.split()[4].isdigit()


def test_metrics_exposition() -> None:
    snap = {"datapath": {"PASS_FLOW": 5, "DROP_HELD": 2}, "flows": 3,
            "flow_table_size": 1024, "charon_up": True, "daemon": {"events": 4},
            "event_to_map_ms": {"count": 2, "p50": 0.1, "p99": 0.2, "max": 0.2},
            "tunnels": [{"tunnel": "site/lan", "peer": "ho-gw", "flows": 3, "pinned": 1,
                         "held_packets": 2, "refused": 0, "state": "DOWN",
                         "cleartext_dropped_out": 3, "cleartext_dropped_in": 0}]}
    text = render(snap)
    assert 'flowpin_packets_total{reason="drop_held"} 2' in text
    assert 'flowpin_tunnel_pinned{tunnel="site/lan",peer="ho-gw"} 1' in text
    assert 'flowpin_tunnel_up{tunnel="site/lan"} 0' in text
    assert 'flowpin_tunnel_cleartext_dropped_out{tunnel="site/lan",peer="ho-gw"} 3' in text
    assert 'flowpin_event_to_map_ms{quantile="0.99"} 0.2' in text
