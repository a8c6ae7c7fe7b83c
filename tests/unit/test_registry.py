"""The tunnel registry on VICI event sequences recorded from real charons.

Each case replays ``tests/fixtures/vici/<name>.json`` (recorded by
``python -m tests.fixtures.vici.record``) and states the transitions that must come out:
a rekey or make-before-break reauthentication never looks like an outage; DPD, a terminate,
break-before-make reauthentication or charon going away does; another peer identity never
inherits the tunnel's flows.
"""

from __future__ import annotations

import pytest

from controlplane.tunnel import Transition, TunnelRegistry
from tests.fixtures.replay import steps, wire
from vici_glue.events import parse_conns, parse_event, parse_sas

KEY = ("site", "lan")


def registry() -> TunnelRegistry:
    reg = TunnelRegistry(allocate_id=lambda key: 7)
    conns = parse_conns(wire(steps("list-conns")[0]["list-conns"]))
    assert [t.kind for t in reg.resync(conns, [])] == ["configured"]
    return reg


def prime(reg: TunnelRegistry, name: str) -> None:
    """Make the tunnel UP with the SA that the recording is about to lose or rekey."""
    recorded = steps(name)
    events = [s for s in recorded if "event" in s]
    old = next((s for s in events if s["msg"].get("up") != "yes"
                and s["event"] != "ike-update"), None)
    if old is None:  # nothing but a reconnection: the SA that charon listed
        conns = parse_conns(wire(steps("list-conns")[0]["list-conns"]))
        sas = next(s["list-sas"] for s in recorded if "list-sas" in s)
        assert [t.kind for t in reg.resync(conns, parse_sas(wire(sas)))] == ["up"]
        return
    body = next(v for v in old["msg"].values() if isinstance(v, dict))
    if "old" in body:  # ike-rekey: the old IKE_SA carried the CHILD_SA
        ike = body["old"] | {"child-sas": {"lan-1": {"name": "lan", "uniqueid": "1"}}}
    elif any("old" in c for c in body.get("child-sas", {}).values()):  # child-rekey
        (c,) = body["child-sas"].values()
        ike = body | {"child-sas": {"lan-x": c["old"]}}
    elif not body.get("child-sas"):  # ike-updown: its CHILD_SA is in the next child-updown
        nxt = events[events.index(old) + 1]
        ike = next(v for v in nxt["msg"].values() if isinstance(v, dict))
    else:
        ike = body
    ike = ike | {"child-sas": {k: c | {"state": "INSTALLED"}
                               for k, c in ike["child-sas"].items()}}
    up = parse_event("child-updown", wire({"up": "yes", "site": ike}))
    assert [t.kind for t in reg.on_event(up)] == ["up"]


def replay(reg: TunnelRegistry, name: str) -> list[Transition]:
    out: list[Transition] = []
    for step in steps(name):
        if "event" in step:
            out += reg.on_event(parse_event(step["event"].encode(), wire(step["msg"])))
        elif step.get("disconnected"):
            out += reg.on_disconnect()
        elif "list-sas" in step:
            conns = parse_conns(wire(steps("list-conns")[0]["list-conns"]))
            out += reg.resync(conns, parse_sas(wire(step["list-sas"])))
    return out


# (recording, primed UP first?, transitions expected, final state)
CASES = [
    ("up", False, ["up"], "UP"),
    ("child-rekey", True, [], "UP"),
    ("ike-rekey", True, [], "UP"),
    ("reauth-make-before-break", True, [], "UP"),
    ("reauth-break-before-make", True, ["down", "up"], "UP"),
    ("dpd", True, ["down", "up"], "UP"),
    ("terminate-child", True, ["down", "up"], "UP"),
    ("peer-charon-restart", True, ["down", "up"], "UP"),
    ("charon-restart", True, ["down", "up"], "UP"),
    ("peer-identity-change", False, ["up", "down", "up"], "UP"),
]


@pytest.mark.parametrize(("name", "primed", "kinds", "final"), CASES,
                         ids=[c[0] for c in CASES])
def test_recorded_sequence(name: str, primed: bool, kinds: list[str], final: str) -> None:
    reg = registry()
    if primed:
        prime(reg, name)
    out = replay(reg, name)
    assert [t.kind for t in out] == kinds
    t = reg.get(KEY)
    assert t is not None and t.state == final
    assert t.tunnel_id == 7  # stable across every rebinding


def test_rekey_keeps_exactly_one_installed_child() -> None:
    reg = registry()
    prime(reg, "child-rekey")
    replay(reg, "child-rekey")
    t = reg.get(KEY)
    assert t is not None and len(t.children) == 1
    (uid,) = t.children
    assert uid == 3  # the new CHILD_SA of the recording


def test_make_before_break_has_two_children_in_between() -> None:
    reg = registry()
    prime(reg, "reauth-make-before-break")
    evs = [s for s in steps("reauth-make-before-break") if "event" in s]
    for s in evs[:2]:
        assert reg.on_event(parse_event(s["event"], wire(s["msg"]))) == []
    assert len(reg.get(KEY).children) == 2  # type: ignore[union-attr]


def test_peer_identity_change_names_the_previous_peer() -> None:
    reg = registry()
    out = replay(reg, "peer-identity-change")
    assert [t.previous_peer for t in out if t.kind == "up"] == ["", "ho-gw"]
    assert reg.get(KEY).peer_id == "ho-gw-replacement"  # type: ignore[union-attr]


def test_down_reason_names_the_cause() -> None:
    reg = registry()
    prime(reg, "dpd")
    out = replay(reg, "dpd")
    assert out[0].reason == "IKE_SA deleted"
    reg2 = registry()
    prime(reg2, "charon-restart")
    assert replay(reg2, "charon-restart")[0].reason == "charon unreachable"


def test_selectors_come_from_config_then_negotiation() -> None:
    reg = registry()
    t = reg.get(KEY)
    assert t is not None
    assert [str(n) for n in t.local_ts] == ["10.1.0.0/24", "fd01::/64"]
    assert [str(n) for n in t.remote_ts] == ["10.2.0.0/24", "fd02::/64"]


def test_resync_removes_unconfigured_and_keeps_ids() -> None:
    ids = iter(range(1, 100))
    reg = TunnelRegistry(allocate_id=lambda key: next(ids))
    conns = parse_conns(wire(steps("list-conns")[0]["list-conns"]))
    reg.resync(conns, [])
    out = reg.resync([], [])
    assert [t.kind for t in out] == ["removed"]
    assert reg.get(KEY) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_charon_restart_before_its_conns_are_loaded_keeps_the_tunnel_down() -> None:
    """charon restarted, VICI up, conns not loaded yet (Debian's unit loads them after the
    socket is up): the tunnel stays, DOWN, with its selectors, for the grace period; a
    CHILD_SA of it brings it back UP under the same id."""
    clock = Clock()
    reg = TunnelRegistry(allocate_id=lambda key: 7, clock=clock, grace=600)
    conns = parse_conns(wire(steps("list-conns")[0]["list-conns"]))
    reg.resync(conns, [])
    assert [t.kind for t in reg.on_disconnect()] == []  # it was DOWN already
    out = reg.resync([], [])
    assert [t.kind for t in out] == ["missing"]
    t = reg.get(KEY)
    assert t is not None and t.state == "DOWN" and t.local_ts and t.tunnel_id == 7
    clock.now += 599
    assert reg.resync([], []) == [] and not reg.missing_expired()
    assert reg.forget_missing(set()) == []
    # the conns are loaded again: listed, no longer missing
    reg.resync(conns, [])
    assert reg.get(KEY).missing_since == 0.0  # type: ignore[union-attr]


def test_missing_tunnel_is_removed_after_the_grace_period_only() -> None:
    clock = Clock()
    reg = TunnelRegistry(allocate_id=lambda key: 7, clock=clock, grace=600)
    conns = parse_conns(wire(steps("list-conns")[0]["list-conns"]))
    reg.resync(conns, [])
    reg.resync([], [])
    clock.now += 600
    assert reg.missing_expired()
    assert reg.forget_missing({KEY}) == []  # listed again meanwhile: kept
    assert reg.get(KEY) is not None and not reg.missing_expired()
    reg.resync([], [])
    clock.now += 601
    assert [t.kind for t in reg.forget_missing(set())] == ["removed"]
    assert reg.get(KEY) is None


def test_restored_tunnel_is_not_forgotten_before_charon_is_heard() -> None:
    """A restarted daemon restores the tunnels it knew (DOWN, last selectors); a charon that
    lists nothing yet only starts their grace period."""
    clock = Clock()
    reg = TunnelRegistry(allocate_id=lambda key: 7, clock=clock, grace=600)
    net = parse_conns(wire(steps("list-conns")[0]["list-conns"]))[0]
    assert [t.kind for t in reg.restore(KEY, net.local_ts, net.remote_ts)] == ["configured"]
    assert [t.kind for t in reg.resync([], [])] == ["missing"]
    assert reg.get(KEY).local_ts == net.local_ts  # type: ignore[union-attr]
