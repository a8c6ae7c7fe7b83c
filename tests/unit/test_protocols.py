"""The one protocol table: CLI names, show labels and the ASA's teardown wording."""

from __future__ import annotations

import pytest

from controlplane import protocols


@pytest.mark.parametrize(("name", "number", "label", "teardown"), [
    ("tcp", 6, "TCP", "TCP"), ("udp", 17, "UDP", "UDP"), ("icmp", 1, "ICMP", "ICMP"),
    ("icmp6", 58, "ICMP6", "ICMP")])
def test_each_protocol_is_named_once(name: str, number: int, label: str,
                                     teardown: str) -> None:
    assert protocols.number(name.upper()) == number
    assert protocols.name(number) == name
    assert protocols.label(number) == label
    assert protocols.teardown_label(number) == teardown


def test_unknown_protocols() -> None:
    assert protocols.label(47) == "47" and protocols.name(47) == "47"
    with pytest.raises(ValueError, match="unknown protocol"):
        protocols.number("gre")
