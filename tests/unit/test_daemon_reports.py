"""What the daemon logs beside the SA events, without root: teardowns take the lock once
per batch (never per flow), tunnel DOWN/UP lines read the sweeper's counts, and lost
data-path events are told once per interval. The data path is the in-memory TunnelMaps;
its counters are a dict."""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from controlplane import daemon as daemon_mod
from controlplane.config import Config
from controlplane.daemon import Daemon
from controlplane.flow_counts import FlowCounts
from controlplane.flows import Flow, FlowKey, RemovedFlow
from tests.fixtures.replay import conns, follower_items
from tests.unit.fake_maps import FakeTunnelMaps
from vici_glue.follower import Resync

SITE = 1


class CountingLock:
    """The daemon's lock, counting how often it is taken."""

    def __init__(self) -> None:
        self.inner = threading.RLock()
        self.taken = 0

    def __enter__(self) -> None:
        self.inner.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def gateway(tmp_path: Path) -> tuple[Daemon, FakeTunnelMaps]:
    d = Daemon(Config(instance="unit", preserve_vpn_flows=True, reclassify_vpn=False),
               state_dir=tmp_path)
    maps = FakeTunnelMaps()
    d.use_maps(maps)
    d.handle(Resync(conns(), []))
    return d, maps


def removed(n: int, tunnel_id: int = SITE) -> list[RemovedFlow]:
    a, b = ipaddress.ip_address("10.1.0.5"), ipaddress.ip_address("10.2.0.9")
    return [RemovedFlow("Tunnel has been torn down", 1.0, decoded=Flow(
        FlowKey(6, (a, b), (1000 + i, 80)), tunnel_id, 0, (32 | 16, 0), (0, 0), (0, 0), 0, 1,
        (1, 1), (60, 60))) for i in range(n)]


def test_a_batch_of_teardowns_takes_the_lock_once(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    d, _ = gateway(tmp_path)
    d.lock = CountingLock()  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="flowpin"):
        d.log_removed(removed(1000) + removed(5, tunnel_id=0))
    assert d.lock.taken == 1  # type: ignore[attr-defined]
    lines = [r.getMessage() for r in caplog.records if "302014" in r.getMessage()]
    assert len(lines) == 1005 and d.stats["teardowns_logged"] == 1005
    assert "outside:10.2.0.9/80" in lines[-1] or "outside:10.1.0.5" in lines[-1]


def test_down_and_up_lines_count_from_the_sweep(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    d, maps = gateway(tmp_path)
    d.sweeper = SimpleNamespace(counts=FlowCounts({(SITE, 0): [7, 4, 0, 0]}, 7, at=1.0))  # type: ignore[assignment]
    d._later = lambda fn, *args: fn(*args)  # type: ignore[method-assign]  # no thread
    with caplog.at_level(logging.INFO, logger="flowpin"):
        for name in ("up", "charon-restart"):
            for item in follower_items(name):
                d.handle(item)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "4 TCP flows pinned" in text
    assert "7 flows resumed" in text


class Counters:
    """The data path's per-CPU counters as FlowTable.counters() sums them."""

    def __init__(self) -> None:
        self.c = {"EVENT_LOST": 0, "REMOVED_LOST": 0}

    def counters(self) -> dict[str, int]:
        return dict(self.c)


def test_lost_events_are_told_once_per_interval(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    d, _ = gateway(tmp_path)
    d.table = Counters()  # type: ignore[assignment]
    every = daemon_mod.LOST_REPORT_INTERVAL
    with caplog.at_level(logging.INFO, logger="flowpin"):
        d._check_lost(every)  # nothing lost yet: nothing told
        d.table.c.update(EVENT_LOST=3000, REMOVED_LOST=2900)  # type: ignore[attr-defined]
        for i in range(200):  # the loop asks every 50 ms, records go on being lost
            d.table.c["EVENT_LOST"] += i % 2  # type: ignore[attr-defined]
            d._check_lost(every + 0.05 * (i + 1))
        d._check_lost(3 * every)  # nothing new since
    told = [r.getMessage() for r in caplog.records if "752123" in r.getMessage()]
    assert len(told) == 1, told
    assert "3100 data-path events lost" in told[0] and "2900 removed-flow records" in told[0]
    d.table.c["EVENT_LOST"] += 10  # type: ignore[attr-defined]
    d._check_lost(4 * every)
    told = [r.getMessage() for r in caplog.records if "752123" in r.getMessage()]
    assert len(told) == 2 and "10 data-path events lost" in told[1] and " 0 removed" in told[1]


def test_teardown_logging_gives_way_while_an_sa_event_is_applied(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """While handle() applies an SA event, the teardown lines wait (and go on after): the
    event's map writes do not queue for the GIL behind thousands of log lines."""
    d, maps = gateway(tmp_path)
    seen: list[bool] = []  # the flag as each map write of an SA event saw it
    write = maps.set_tunnel

    def watched(*args: object, **kw: object) -> None:
        seen.append(d.no_event_pending.is_set())
        write(*args, **kw)  # type: ignore[arg-type]

    maps.set_tunnel = watched  # type: ignore[method-assign]
    for item in follower_items("up"):
        d.handle(item)
    assert seen and not any(seen)  # cleared around every write of the event
    assert d.no_event_pending.is_set()  # and set again once it is applied
    d.no_event_pending.clear()  # an event being applied, as handle() does
    with caplog.at_level(logging.INFO, logger="flowpin"):
        t = threading.Thread(target=d.log_removed, args=(removed(3),))
        t.start()
        t.join(0.05)
        assert t.is_alive() and d.stats["teardowns_logged"] == 0
        d.no_event_pending.set()  # the event is written
        t.join(5)
    assert d.stats["teardowns_logged"] == 3


def test_an_event_waiting_for_the_lock_never_makes_its_holder_give_way(
        tmp_path: Path) -> None:
    """A change command logs its teardowns on the loop, under the lock: an SA event that
    waits for that lock must not make it wait in turn (each line would wait its bound)."""
    d, _ = gateway(tmp_path)
    items = list(follower_items("up"))
    with d.lock:
        t = threading.Thread(target=lambda: [d.handle(i) for i in items])
        t.start()
        t.join(0.05)
        assert t.is_alive()  # the event waits for the lock ...
        assert d.no_event_pending.is_set()  # ... without asking the holder to give way
        d.log_removed(removed(3))
    t.join(5)
    assert not t.is_alive() and d.stats["teardowns_logged"] == 3


def test_an_event_that_outlasts_the_bound_is_waited_for_once(tmp_path: Path) -> None:
    """An SA event still applied after give_way's bound (a resync, a write stuck) holds
    the teardown lines up once, not once per line."""
    d, _ = gateway(tmp_path)

    class NeverDone:
        waits = 0

        def is_set(self) -> bool:
            return False

        def wait(self, timeout: float) -> bool:
            NeverDone.waits += 1
            return False

    d.no_event_pending = NeverDone()  # type: ignore[assignment]
    d.log_removed(removed(50))
    assert NeverDone.waits == 1 and d.stats["teardowns_logged"] == 50


def test_after_a_resync_the_long_lived_objects_leave_the_collector(tmp_path: Path) -> None:
    """A resync queues, beside the SA events, the garbage collector's settling: what is
    alive then is frozen out of its generations and the young generation made larger
    (full passes walked 70,000 long-lived objects again and again during a big teardown)."""
    import gc

    threshold = gc.get_threshold()
    try:
        d, _maps = gateway(tmp_path)
        queued = []
        while not d._reports.empty():
            queued.append(d._reports.get_nowait())
        settle = [fn for fn, _args in queued if fn is daemon_mod._settle_gc]
        assert len(settle) == 1
        gc.unfreeze()
        settle[0]()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == daemon_mod.GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
