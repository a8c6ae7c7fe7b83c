"""The VICI follower against a real charon: resync, events, charon dying and coming back."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest

from controlplane.lab.flap import flap
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
