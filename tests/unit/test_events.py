"""Decoding VICI messages into typed values (bytes in, str/int/networks out)."""

import ipaddress

import pytest

from vici_glue.events import EventFormatError, parse_event, parse_ts


@pytest.mark.parametrize(("raw", "nets"), [
    ([b"10.1.0.0/24", b"fd01::/64"], ["10.1.0.0/24", "fd01::/64"]),
    ([b"10.1.0.0/24[tcp/80]"], ["10.1.0.0/24"]),
    ([b"10.0.0.1-10.0.0.6"], ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]),
    ([b"dynamic"], []),
    ([b"10.1.0.7/24"], ["10.1.0.0/24"]),
    (None, []),
])
def test_parse_ts(raw: list[bytes] | None, nets: list[str]) -> None:
    assert parse_ts(raw) == tuple(ipaddress.ip_network(n) for n in nets)


def test_child_updown_decoded() -> None:
    ev = parse_event(b"child-updown", {"up": b"yes", "site": {
        "uniqueid": b"4", "state": b"ESTABLISHED", "remote-id": b"ho-gw",
        "child-sas": {"lan-9": {"name": b"lan", "uniqueid": b"9", "reqid": b"1",
                                "state": b"INSTALLED", "spi-in": b"c0ffee01",
                                "bytes-in": b"1234", "local-ts": [b"10.1.0.0/24"]}}}})
    assert ev.kind == "child-updown" and ev.up is True
    assert ev.ike.conn == "site" and ev.ike.uniqueid == 4 and ev.ike.remote_id == "ho-gw"
    (child,) = ev.ike.children
    assert (child.name, child.uniqueid, child.spi_in, child.bytes_in) == ("lan", 9,
                                                                          "c0ffee01", 1234)


def test_down_has_no_up_key() -> None:
    ev = parse_event(b"ike-updown", {"site": {"uniqueid": b"4"}})
    assert ev.up is False


@pytest.mark.parametrize(("kind", "msg"), [
    (b"bogus", {}),
    (b"ike-updown", {}),
    (b"ike-rekey", {"site": {"uniqueid": b"1"}}),
])
def test_malformed_events_are_refused(kind: bytes, msg: dict) -> None:
    with pytest.raises(EventFormatError):
        parse_event(kind, msg)
