"""Log lines in the ASA's form, from crafted flows."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from controlplane.flow_types import Side
from controlplane.flows import Flow, FlowKey, RemovedFlow
from controlplane.messages import teardown_line


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


def conn_number(r: RemovedFlow) -> str:
    return teardown_line(r).split()[4]


def test_connection_id_names_the_flow_and_only_the_flow() -> None:
    """The same flow has the same number in every line about it, whatever the line says,
    in every process (the value is recorded: a per-process hash would change it); another
    flow has another number."""
    f = flow()
    n = conn_number(RemovedFlow("conn-timeout", 1.0, decoded=f))
    assert n == "1713707727"
    later = dataclasses.replace(f, last_s=900, packets=(20, 80), bytes=(2000, 90000))
    assert conn_number(RemovedFlow("Tunnel has been torn down", 800.0, decoded=later)) == n
    others = [dataclasses.replace(f, key=FlowKey(6, f.key.addr, (1136, 80))),
              dataclasses.replace(f, key=FlowKey(17, f.key.addr, f.key.port)),
              dataclasses.replace(f, created_s=101)]  # the same tuple, opened again
    numbers = {conn_number(RemovedFlow("conn-timeout", 1.0, decoded=o)) for o in others}
    assert n not in numbers and len(numbers) == len(others)
