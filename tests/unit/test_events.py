"""Decoding VICI messages into typed values (bytes in, str/int/networks out)."""

import ipaddress
import re

import pytest

from vici_glue.events import EventFormatError, parse_conns, parse_event, parse_ts


@pytest.mark.parametrize(("raw", "nets"), [
    ([b"10.1.0.0/24", b"fd01::/64"], ["10.1.0.0/24", "fd01::/64"]),
    ([b"10.1.0.0/24[tcp/80]"], ["10.1.0.0/24"]),
    # Ranges as strongSwan 5.9.8 lists them (a conn loaded with 10.0.0.1-10.0.0.6).
    ([b"10.0.0.1..10.0.0.6"], ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]),
    ([b"10.1.0.10..10.1.0.20"], ["10.1.0.10/31", "10.1.0.12/30", "10.1.0.16/30",
                                 "10.1.0.20/32"]),
    ([b"fd01::1..fd01::5"], ["fd01::1/128", "fd01::2/127", "fd01::4/127"]),
    ([b"10.1.0.10..10.1.0.20[tcp/80]"], ["10.1.0.10/31", "10.1.0.12/30", "10.1.0.16/30",
                                         "10.1.0.20/32"]),
    ([b"fd01::1..fd01::5[udp/53]"], ["fd01::1/128", "fd01::2/127", "fd01::4/127"]),
    ([b"0.0.0.0..255.255.255.255"], ["0.0.0.0/0"]),
    ([b"dynamic"], []),
    ([b"10.1.0.7/24"], ["10.1.0.0/24"]),
    (None, []),
])
def test_parse_ts(raw: list[bytes] | None, nets: list[str]) -> None:
    assert parse_ts(raw) == tuple(ipaddress.ip_network(n) for n in nets)


@pytest.mark.parametrize("raw", [b"10.0.0.1-10.0.0.6", b"10.0.0.9..10.0.0.1",
                                 b"10.0.0.1..fd01::1", b"garbage", b"10.1.0.0/33"])
def test_parse_ts_refuses_what_it_cannot_cover(raw: bytes) -> None:
    """A selector that is not understood is an error naming it, never a guess: a wrong
    guess would leave a tunnel's traffic uncovered."""
    with pytest.raises(ValueError, match=re.escape(repr(raw.decode()))):
        parse_ts([b"10.1.0.0/24", raw])


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


def test_range_selectors_as_a_real_charon_lists_them() -> None:
    """``list-conns`` recorded from strongSwan 5.9.8 with a child loaded with
    ``local_ts = 10.1.0.10-10.1.0.20, fd01::1-fd01::5`` (tests/fixtures/vici/record.py,
    scenario ranges): charon prints ``a..b``, and a range that is a prefix as a prefix."""
    from tests.unit.test_registry import steps, wire

    (step,) = steps("list-conns-ranges")
    conns = {c.child: c for c in parse_conns(wire(step["list-conns"]))}
    rng = conns["ranges"]
    cover = ipaddress.summarize_address_range
    assert rng.local_ts == (
        *cover(ipaddress.ip_address("10.1.0.10"), ipaddress.ip_address("10.1.0.20")),
        *cover(ipaddress.ip_address("fd01::1"), ipaddress.ip_address("fd01::5")))
    assert rng.remote_ts == (
        *cover(ipaddress.ip_address("10.2.0.10"), ipaddress.ip_address("10.2.0.12")),
        ipaddress.ip_network("fd02::10/124"))
    assert conns["lan"].local_ts == (ipaddress.ip_network("10.1.0.0/24"),
                                     ipaddress.ip_network("fd01::/64"))
