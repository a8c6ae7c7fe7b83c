"""The daemon's orchestration of tunnel changes, without root: recorded charon traffic in
(``tests/fixtures/vici``), the writes it makes to the data path out, into an in-memory
implementation of the same :class:`TunnelMaps` interface the real flow table implements.

Rows: sysopt preserve-vpn-flows, the recordings fed in order, then the tunnel's word in the
data path (state, generation, preserve flag).
"""

from __future__ import annotations

import inspect
import ipaddress
from pathlib import Path

import pytest

from controlplane.config import Config
from controlplane.daemon import Daemon
from controlplane.flow_table import FlowTable
from controlplane.tunnel_maps import TunnelMaps
from tests.fixtures.replay import conns, follower_items
from tests.unit.fake_maps import FakeTunnelMaps
from vici_glue.events import ChildConfig
from vici_glue.follower import Resync

SITE = 1  # the first id the daemon hands out


def gateway(tmp_path: Path, preserve: bool, grace: float = 600.0,
            ) -> tuple[Daemon, FakeTunnelMaps]:
    d = Daemon(Config(instance="unit", preserve_vpn_flows=preserve, reclassify_vpn=False,
                      forget_unconfigured_after=grace), state_dir=tmp_path)
    maps = FakeTunnelMaps()
    d.use_maps(maps)
    d.handle(Resync(conns(), []))  # charon heard: site/lan configured, no SA yet
    return d, maps


def feed(d: Daemon, *recordings: str) -> None:
    for name in recordings:
        for item in follower_items(name):
            d.handle(item)


def word(maps: FakeTunnelMaps, tid: int = SITE) -> tuple[str, int, bool]:
    t = maps.tunnel(tid)
    return t.state, t.generation, t.preserve


# (preserve-vpn-flows, recordings in order, the tunnel's word after them)
CASES = [
    (True, [], ("DOWN", 0, True)),
    (True, ["up"], ("UP", 0, True)),
    (False, ["up"], ("UP", 0, False)),
    # charon gone: DOWN; preserved, its flows stay bound (same generation) and are held
    (True, ["up", "charon-restart"], ("UP", 0, True)),
    # ... not preserved: a new generation tears every flow of it down at once
    (False, ["up", "charon-restart"], ("UP", 1, False)),
    # another peer identity never inherits the flows, preserved or not
    (True, ["peer-identity-change"], ("UP", 1, True)),
    (False, ["peer-identity-change"], ("UP", 2, False)),
]


@pytest.mark.parametrize(("preserve", "recordings", "expected"), CASES,
                         ids=[f"{'preserve' if c[0] else 'torn'}-{'+'.join(c[1]) or 'none'}"
                              for c in CASES])
def test_recorded_traffic_to_tunnel_words(tmp_path: Path, preserve: bool,
                                          recordings: list[str],
                                          expected: tuple[str, int, bool]) -> None:
    d, maps = gateway(tmp_path, preserve)
    feed(d, *recordings)
    assert word(maps) == expected
    assert d.registry.get(("site", "lan")).state == expected[0]  # type: ignore[union-attr]


def test_charon_gone_writes_down_before_the_resync_brings_it_back(tmp_path: Path) -> None:
    d, maps = gateway(tmp_path, preserve=True)
    feed(d, "up")
    gone, back = follower_items("charon-restart")
    d.handle(gone)
    assert word(maps) == ("DOWN", 0, True)
    assert not d.charon_up
    d.handle(back)
    assert word(maps) == ("UP", 0, True) and d.charon_up


def test_selectors_are_written_before_the_tunnel_goes_up(tmp_path: Path) -> None:
    d, maps = gateway(tmp_path, preserve=True)
    assert {(str(s.local), str(s.remote), s.tunnel_id) for s in maps.selectors} == {
        ("10.1.0.0/24", "10.2.0.0/24", SITE), ("fd01::/64", "fd02::/64", SITE)}
    feed(d, "up")
    assert maps.writes.index(("selectors", 0)) < maps.writes.index(("up", SITE))
    assert len(d.latency.samples) == 1  # event -> map, for show counters


def test_a_failing_selector_compile_holds_up_but_never_stops_a_down(tmp_path: Path) -> None:
    """charon comes back with site's SA and a new conn, and writing the new selectors
    fails: site's DOWN was written, its UP is held until a compile succeeds."""
    d, maps = gateway(tmp_path, preserve=False)
    feed(d, "up")
    maps.fail_selectors = True
    gone, back = follower_items("charon-restart")
    d.handle(gone)
    assert word(maps) == ("DOWN", 1, False)
    assert isinstance(back, Resync)
    other = ChildConfig("other", "lan", ("peer",), (ipaddress.ip_network("10.5.0.0/24"),),
                        (ipaddress.ip_network("10.6.0.0/24"),))
    d.handle(Resync([*back.conns, other], back.sas))
    assert word(maps)[0] == "DOWN" and d.stats["internal_errors"] == 1
    maps.fail_selectors = False
    d.handle(Resync([*back.conns, other], back.sas))  # nothing changed, the compile works
    assert word(maps)[0] == "UP"
    assert {s.tunnel_id for s in maps.selectors} == {SITE, SITE + 1}


def test_an_unconfigured_tunnel_is_torn_down_and_its_id_freed(tmp_path: Path) -> None:
    d, maps = gateway(tmp_path, preserve=True, grace=0)
    feed(d, "up")
    maps.in_use = {SITE}  # a flow still carries the id
    d.handle(Resync([], []))
    assert word(maps) == ("DOWN", 1, True) and maps.selectors == []
    assert d.registry.get(("site", "lan")) is None and d.ids.retired == {SITE}
    d.free_tunnel_ids()
    assert d.ids.retired == {SITE}, "freed while a flow still carries it"
    maps.in_use = set()
    d.free_tunnel_ids()
    assert d.ids.retired == set() and maps.stats_reset == [SITE]


def test_sysopt_reaches_tunnels_already_up(tmp_path: Path) -> None:
    d, maps = gateway(tmp_path, preserve=False)
    feed(d, "up")
    d.set_sysopt("preserve-vpn-flows", True, None)
    assert word(maps) == ("UP", 0, True)
    d.set_sysopt("reclassify-vpn", True, None)
    assert maps.reclassify
    with pytest.raises(ValueError, match="global"):
        d.set_sysopt("reclassify-vpn", True, "site/lan")
    # kept across restarts: a new daemon on the same state directory starts with it
    again, maps2 = gateway(tmp_path, preserve=False)
    assert word(maps2) == ("DOWN", 0, True)


def test_the_fake_and_the_flow_table_implement_one_interface() -> None:
    """Same methods, same signatures: the fake cannot drift from what the daemon calls."""
    assert isinstance(FakeTunnelMaps(), TunnelMaps)
    methods = [n for n, v in vars(TunnelMaps).items()
               if callable(v) and not n.startswith("_")]
    assert methods
    for name in methods:
        proto = inspect.signature(getattr(TunnelMaps, name))
        assert inspect.signature(getattr(FlowTable, name)) == proto, name
        assert inspect.signature(getattr(FakeTunnelMaps, name)) == proto, name
