"""Initiation on demand: only for a DOWN tunnel with traffic waiting, only while charon is
reachable and initiation is on; a failed attempt backs off exponentially."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from controlplane.config import Config, TunnelOverride
from controlplane.demand import Initiations
from controlplane.tunnel import TunnelRegistry
from tests.fixtures.replay import conns

KEY = ("site", "lan")


def setup(tmp_path: Path, **cfg: object) -> tuple[Initiations, TunnelRegistry, dict[str, int]]:
    # a socket nobody listens on: every initiation fails, as with charon gone
    config = Config(vici_socket=str(tmp_path / "no-charon.vici"), demand_backoff_min=1.0,
                    demand_backoff_max=4.0, **cfg)  # type: ignore[arg-type]
    stats = {"initiations": 0, "initiation_failures": 0}
    reg = TunnelRegistry(allocate_id=lambda key: 1)
    reg.resync(conns(), [])
    return Initiations(lambda: config, stats), reg, stats


def settle(ini: Initiations) -> None:
    deadline = time.monotonic() + 5
    while any(d.running for d in ini.pending.values()) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_failed_initiation_backs_off(tmp_path: Path) -> None:
    """(Each attempt waits 2 s for the VICI socket: one attempt only.)"""
    ini, reg, stats = setup(tmp_path)
    ini.wanted(KEY)
    ini.tick(ini.pending[KEY].next_at - 0.001, reg, {}, charon_up=True)
    assert stats["initiations"] == 0, "started before it was due"
    ini.tick(ini.pending[KEY].next_at, reg, {}, charon_up=True)
    settle(ini)
    d = ini.pending[KEY]
    assert (d.attempts, d.backoff) == (1, 2.0) and "no-charon.vici" in d.last_error
    assert d.next_at > time.monotonic() + 1
    assert stats == {"initiations": 1, "initiation_failures": 1}


def test_no_initiation_without_charon_or_when_off(tmp_path: Path) -> None:
    ini, reg, stats = setup(tmp_path)
    ini.wanted(KEY)
    ini.tick(time.monotonic(), reg, {}, charon_up=False)
    assert stats["initiations"] == 0
    ini.tick(time.monotonic(), reg, {"initiate_tunnels": {"site/lan": False}}, charon_up=True)
    assert stats["initiations"] == 0
    off, reg2, stats2 = setup(tmp_path, tunnels=(TunnelOverride("site",
                                                                initiate_on_demand=False),))
    off.wanted(KEY)
    off.tick(time.monotonic(), reg2, {}, charon_up=True)
    assert stats2["initiations"] == 0


def test_a_tunnel_up_or_gone_is_no_longer_wanted(tmp_path: Path) -> None:
    ini, reg, stats = setup(tmp_path)
    ini.wanted(KEY)
    t = reg.get(KEY)
    assert t is not None
    reg.tunnels[KEY] = dataclasses.replace(t, state="UP")
    ini.tick(time.monotonic(), reg, {}, charon_up=True)
    assert ini.pending == {} and stats["initiations"] == 0
    ini.wanted(KEY)
    ini.satisfied(KEY)
    assert ini.pending == {}
