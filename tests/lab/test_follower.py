"""The VICI follower against a real charon: resync, events, charon dying and coming back."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest

from lab.flap import flap
from vici_glue.follower import Disconnected, Follower, Item, Received, Resync

pytestmark = pytest.mark.lab


def take(q: queue.Queue[Item], kind: type, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            item = q.get(timeout=0.2)
        except queue.Empty:
            continue
        if isinstance(item, kind):
            return item
    raise AssertionError(f"no {kind.__name__} within {timeout} s")


def test_follow_resync_events_and_restart(lab: Any) -> None:
    fol = Follower(lab.charon("bo-gw").vici_path, backoff_max=0.5).start()
    try:
        first = take(fol.out, Resync)
        assert [(c.conn, c.child) for c in first.conns] == [("site", "lan")]
        (ike,) = first.sas
        assert ike.state == "ESTABLISHED" and ike.remote_id == "ho-gw"
        assert [c.state for c in ike.children] == ["INSTALLED"]

        flap(lab, "child", 0.2)
        ev = take(fol.out, Received).event
        assert ev.kind == "child-updown" and ev.up is False

        flap(lab, "restart-charon", 0.5)
        take(fol.out, Disconnected)
        again = take(fol.out, Resync)
        assert again.conns, "configuration reloaded over VICI is seen after the restart"
        assert fol.reconnects >= 1
    finally:
        fol.stop()


def test_range_selectors_of_a_real_charon_decode(lab: Any) -> None:
    """strongSwan lists range selectors as a..b (v4 and v6, with a [proto/port] suffix
    when restricted): the follower decodes them into the prefixes that cover the ranges."""
    import ipaddress

    from lab.lab import PSK
    from vici_glue import session as vs
    from vici_glue.conns import SiteToSite

    conn = SiteToSite(name="rng", child="r", local_addrs=("192.0.2.1",),
                      remote_addrs=("192.0.2.2",), local_id="bo-gw-rng", remote_id="ho-gw-rng",
                      psk=PSK, local_ts=("10.1.0.10-10.1.0.20", "fd01::1-fd01::5"),
                      remote_ts=("10.2.0.10-10.2.0.12[tcp/80]", "fd02::/64"))
    with lab.vici("bo-gw") as s:
        vs.load(s, conn)
    fol = Follower(lab.charon("bo-gw").vici_path).start()
    try:
        first = take(fol.out, Resync)
        (rng,) = [c for c in first.conns if c.conn == "rng"]
        nets = ipaddress.summarize_address_range
        assert rng.local_ts == (
            *nets(ipaddress.ip_address("10.1.0.10"), ipaddress.ip_address("10.1.0.20")),
            *nets(ipaddress.ip_address("fd01::1"), ipaddress.ip_address("fd01::5")))
        assert rng.remote_ts == (
            *nets(ipaddress.ip_address("10.2.0.10"), ipaddress.ip_address("10.2.0.12")),
            ipaddress.ip_network("fd02::/64"))
        assert fol.decode_errors == 0
    finally:
        fol.stop()
        with lab.vici("bo-gw") as s:
            s.unload_conn({"name": "rng"})


def test_follower_survives_an_undecodable_event_and_resyncs(
        lab: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever a decoder raises on one event (here a KeyError, injected into the decoder
    for the first event charon sends), the follower warns once, naming the event and its
    raw text, resyncs from charon's listing, and goes on following."""
    import logging

    import vici_glue.follower as follower_mod

    real = follower_mod.parse_event
    calls = []

    def decoder(name: Any, msg: Any) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise KeyError("a shape nobody foresaw")
        return real(name, msg)

    monkeypatch.setattr(follower_mod, "parse_event", decoder)
    fol = Follower(lab.charon("bo-gw").vici_path, backoff_max=0.5).start()
    try:
        with caplog.at_level(logging.WARNING, logger="flowpin.vici"):
            take(fol.out, Resync)
            flap(lab, "child", 0.5)  # a down (undecodable), then an up
            again = take(fol.out, Resync)
            assert again.sas and [c.child for c in again.conns] == ["lan"]
            ev = take(fol.out, Received).event
            assert ev.kind == "child-updown"
        warnings = [r.getMessage() for r in caplog.records
                    if r.name == "flowpin.vici" and "undecodable" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "'child-updown'" in warnings[0] and "KeyError" in warnings[0]
        assert "child-sas" in warnings[0] and "raw:" in warnings[0]
        assert fol.decode_errors == 1 and fol._thread.is_alive() and fol.connected.is_set()
        assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
    finally:
        fol.stop()


def test_an_undecodable_listing_is_charon_unreachable_until_it_decodes(
        lab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """If charon's listing does not decode, nothing is guessed: the follower reports charon
    as gone (every tunnel DOWN, held), and resyncs once a listing decodes."""
    import vici_glue.follower as follower_mod

    real = follower_mod.parse_conns
    fail = [2]

    def decoder(entries: Any) -> Any:
        if fail[0]:
            fail[0] -= 1
            raise ValueError("traffic selector 'garbage': does not appear to be an address")
        return real(entries)

    monkeypatch.setattr(follower_mod, "parse_conns", decoder)
    fol = Follower(lab.charon("bo-gw").vici_path, backoff_min=0.05, backoff_max=0.2).start()
    try:
        gone = take(fol.out, Disconnected)
        assert "garbage" in gone.reason
        assert take(fol.out, Resync).conns
        assert fol._thread.is_alive() and fol.decode_errors == 2
    finally:
        fol.stop()
