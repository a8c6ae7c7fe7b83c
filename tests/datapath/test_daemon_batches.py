"""One tunnel's trouble never stops another's: the daemon's resync on a real data path.

A resync that brings three tunnels at once -- one whose CHILD_SA has five local subnets to
one remote prefix (more pairs than a trie entry holds), one that finds every data-path id
taken, and the lab's ordinary one -- must bring up what it can and refuse the rest in the
data path (dropped, never passed in clear), each logged and counted. Ids of removed
tunnels are reused once their flows are gone. Packets go through the real programs with
BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controlplane.config import Config
from controlplane.datapath import Datapath, DatapathConfig
from controlplane.flow_types import TF_KICK, TF_PRESERVE, TUNNEL_UP
from lab import packets as tr
from tests.datapath.cases import out, run_steps
from vici_glue.events import ChildConfig, ChildSA, IkeSA
from vici_glue.follower import Resync

pytestmark = pytest.mark.bpf

N = ipaddress.ip_network
SITE = ((N("10.1.0.0/24"), N("fd01::/64")), (N("10.2.0.0/24"), N("fd02::/64")))
FIVE = (tuple(N(f"10.1.{i}.0/24") for i in range(1, 6)), (N("10.2.0.0/24"),))
EXTRA = ((N("10.8.0.0/24"),), (N("10.9.0.0/24"),))
SIX = ((N("10.6.0.0/24"),), (N("10.7.0.0/24"),))


def conf(name: str, ts: Any) -> ChildConfig:
    return ChildConfig(name, "lan", ("peer",), ts[0], ts[1])


def sa(name: str, uid: int, ts: Any) -> IkeSA:
    child = ChildSA("lan", uid, uid, "INSTALLED", "c0000001", "c0000002", ts[0], ts[1])
    return IkeSA(name, uid, "ESTABLISHED", "us", "peer", "192.0.2.1", "192.0.2.2", (child,))


@pytest.fixture(scope="module")
def small_dp() -> Iterator[Datapath]:
    """A private data path with 4 tunnel slots: id 0 (non-VPN), 1 and 2, 3 (refusing)."""
    dp = Datapath(DatapathConfig(instance="fptest-batches", pin=False, flows4_max=1024,
                                 flows6_max=1024, tunnels_max=4, pickup_s=0,
                                 btf=False)).load()
    yield dp
    dp.close()


@pytest.fixture
def daemon(small_dp: Datapath) -> Iterator[Any]:
    from controlplane.daemon import Daemon

    # No grace for unconfigured tunnels: removed at once (the id tests need removals).
    d = Daemon(Config(instance=f"fptest-batches-{os.getpid()}", preserve_vpn_flows=True,
                      reclassify_vpn=False, forget_unconfigured_after=0))
    d.use_datapath(small_dp)
    small_dp.table.clear_flows()
    small_dp.table.replace_selectors([])
    for tid in range(4):
        small_dp.table.tunnels_map[small_dp.table._tkey(tid)] = small_dp.table.tunnels_map.Leaf()
        small_dp.table.reset_tunnel_stats(tid)
    yield d
    if d.resume:  # no resume report may read the maps after small_dp closes them
        d.resume.stop()
    shutil.rmtree(d.state_dir, ignore_errors=True)


def test_a_resync_brings_up_what_fits_and_refuses_the_rest(daemon: Any, small_dp: Datapath,
                                                            caplog: Any) -> None:
    """Three conns, two data-path ids: five's five subnets are merged to fit beside site's
    pair (one tunnel's prefixes), extra gets no id and is refused -- and neither stops the
    others from coming up. (Pairs of different tunnels refused: test_selector_overflow.)"""
    t = small_dp.table
    assert t.refuse_id == 3
    conns = [conf("site", SITE), conf("five", FIVE), conf("extra", EXTRA)]
    sas = [sa("site", 1, SITE), sa("five", 2, FIVE), sa("extra", 3, EXTRA)]
    with caplog.at_level(logging.INFO, logger="flowpin"):
        daemon.handle(Resync(conns, sas))
    ids = {k[0]: v.tunnel_id for k, v in daemon.registry.tunnels.items()}
    assert ids == {"site": 1, "five": 2, "extra": t.refuse_id}
    assert t.tunnel(1).up and t.tunnel(2).up and not t.tunnel(t.refuse_id).up
    assert daemon.stats["selectors_refused"] == 0 and daemon.stats["tunnels_refused"] == 1
    text = caplog.text
    assert "752115" not in text
    assert "%FLOWPIN-3-752117: Tunnel extra/lan: no free data-path tunnel id" in text

    run_steps(small_dp, [
        # The ordinary tunnel works, both families.
        out(tr.tcp("10.1.0.10", "10.2.0.10", 40000, 80, "S"), "PASS_NEW"),
        out(tr.tcp("fd01::10", "fd02::10", 40000, 80, "S"), "PASS_NEW"),
        # All five of five's subnets carry its traffic.
        *[out(tr.udp(f"10.1.{i}.5", "10.2.0.10", 5000 + i, 53), "PASS_NEW")
          for i in range(1, 6)],
        # The tunnel without an id of its own: refused, although its SA is installed.
        out(tr.udp("10.8.0.5", "10.9.0.5", 5006, 53), "DROP_TUNNEL_DOWN"),
    ])
    assert t.tunnel(t.refuse_id).refused == 1


def test_ids_are_reused_once_the_flows_are_gone(daemon: Any, small_dp: Datapath) -> None:
    t = small_dp.table
    daemon.handle(Resync([conf("site", SITE), conf("five", FIVE)],
                                         [sa("site", 1, SITE), sa("five", 2, FIVE)]))
    run_steps(small_dp, [out(tr.udp("10.1.1.5", "10.2.0.10", 5001, 53), "PASS_NEW")])
    assert 2 in t.tunnel_ids_in_use()
    # five is no longer configured: removed, its id retired but still carried by a flow.
    daemon.handle(Resync([conf("site", SITE)], [sa("site", 1, SITE)]))
    assert daemon.ids.retired == {2}
    daemon.free_tunnel_ids()
    assert daemon.ids.retired == {2}, "freed while a flow still carries the id"
    t.clear_flows()
    daemon.free_tunnel_ids()
    assert daemon.ids.retired == set() and daemon.stats["tunnel_ids_freed"] == 1
    # A new tunnel gets the freed id, with counters from zero, and works.
    daemon.handle(Resync([conf("site", SITE), conf("six", SIX)],
                                         [sa("site", 1, SITE), sa("six", 3, SIX)]))
    assert daemon.registry.get(("six", "lan")).tunnel_id == 2
    assert t.tunnel(2).up and t.tunnel(2).refused == 0
    run_steps(small_dp, [out(tr.udp("10.6.0.5", "10.7.0.5", 5001, 53), "PASS_NEW")])


def test_sighup_only_flags_and_the_loop_reloads(daemon: Any, tmp_path: Any) -> None:
    """The SIGHUP handler must not take locks (queue.Queue.put is not reentrant: a signal
    arriving while the main thread holds the queue's lock would deadlock the daemon). It
    sets a flag; the loop reloads; a broken file keeps the running configuration."""
    import dataclasses
    import threading

    cfg = tmp_path / "flowpin.toml"
    cfg.write_text("[sysopt]\npreserve-vpn-flows = false\n")
    daemon.cfg = dataclasses.replace(daemon.cfg, path=str(cfg))
    before = daemon.inbox.qsize()
    daemon.on_sighup()
    assert daemon.reload_requested and daemon.inbox.qsize() == before
    loop = threading.Thread(target=daemon.run, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while daemon.stats["reloads"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert daemon.stats["reloads"] == 1 and daemon.cfg.preserve_vpn_flows is False
        cfg.write_text("tunnel = [1]\n")
        daemon.on_sighup()
        while daemon.stats["reload_errors"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert daemon.stats["reload_errors"] == 1 and loop.is_alive()
        assert daemon.cfg.path == str(cfg) and daemon.cfg.preserve_vpn_flows is False
    finally:
        daemon.request_stop()
        loop.join(5)


def test_a_failing_selector_compile_never_stops_a_down(daemon: Any, small_dp: Datapath,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: Any) -> None:
    """A resync in which site's CHILD_SA is gone and a new tunnel appears: if compiling the
    selectors fails (injected here: the trie refuses the write), site must still be written
    DOWN -- the gateway would otherwise keep passing its traffic with no SA behind it."""
    t = small_dp.table
    daemon.handle(Resync([conf("site", SITE)], [sa("site", 1, SITE)]))
    assert t.tunnel(1).up

    def broken(*_a: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(t, "replace_selectors", broken)
    trs = daemon.registry.resync([conf("six", SIX), conf("site", SITE)], [])
    assert sorted(tr.kind for tr in trs) == ["configured", "down"]
    with caplog.at_level(logging.ERROR, logger="flowpin"):
        daemon.apply_transitions(trs, time.monotonic())
    assert not t.tunnel(1).up
    assert "compiling the selectors failed" in caplog.text
    assert daemon.stats["internal_errors"] == 1
    # A tunnel that comes up meanwhile is not written UP while its selectors are missing.
    trs = daemon.registry.resync([conf("six", SIX), conf("site", SITE)],
                                 [sa("site", 4, SITE), sa("six", 5, SIX)])
    assert sorted(tr.kind for tr in trs) == ["up", "up"]
    daemon.apply_transitions(trs, time.monotonic())
    assert not t.tunnel(1).up and not t.tunnel(2).up
    # Once the selectors compile again (the next resync, even one that changes nothing),
    # the tunnels get the state the registry has for them.
    monkeypatch.undo()
    trs = daemon.registry.resync([conf("six", SIX), conf("site", SITE)],
                                 [sa("site", 4, SITE), sa("six", 5, SIX)])
    assert trs == []
    daemon.apply_transitions(trs, time.monotonic())
    assert t.tunnel(1).up and t.tunnel(2).up


def test_one_failing_transition_does_not_stop_the_others(daemon: Any, small_dp: Datapath,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: Any) -> None:
    t = small_dp.table
    real = t.set_tunnel

    def set_tunnel(tid: int, **kw: Any) -> None:
        if tid == 1:
            raise OSError(errno.E2BIG, "injected: this tunnel's write fails")
        real(tid, **kw)

    monkeypatch.setattr(t, "set_tunnel", set_tunnel)
    with caplog.at_level(logging.ERROR, logger="flowpin"):
        daemon.handle(Resync([conf("site", SITE), conf("six", SIX)],
                                             [sa("site", 1, SITE), sa("six", 2, SIX)]))
    assert t.tunnel(2).up
    assert "Tunnel site/lan: applying 'configured' failed" in caplog.text


def test_a_batch_of_tunnel_words_lands_at_its_end(small_dp: Datapath,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The words a resync or charon's loss writes go in one batch at its end: this thread
    sees them at once, the map (what the data path reads) only then; another thread reads
    the map, and what it writes meanwhile is not undone by the batch."""
    t = small_dp.table
    t.tunnels_map[t._tkey(1)] = t.tunnels_map.Leaf()

    def raw(tid: int) -> Any:  # the map itself
        return t.tunnels_map[t._tkey(tid)]

    gen2 = raw(2).generation
    other: dict[str, Any] = {}

    def another_thread() -> None:
        other["sees_up"] = t.tunnel(1).up
        t.set_tunnel(2, preserve=True)

    with t.tunnel_writes():
        t.set_tunnel(1, up=True, preserve=True)
        t.set_kick(1, True)
        gen = t.bump_generation(2)
        assert gen == gen2 + 1
        assert t.tunnel(1).up and t.kick_enabled(1) and t.tunnel(2).generation == gen
        assert t.tunnel_words()[1] == (0, True, True)
        assert raw(1).state != TUNNEL_UP and raw(2).generation == gen2
        th = threading.Thread(target=another_thread)
        th.start()
        th.join()
        assert other["sees_up"] is False and raw(2).flags & TF_PRESERVE
    assert raw(1).state == TUNNEL_UP and raw(1).flags & TF_PRESERVE and raw(1).flags & TF_KICK
    assert raw(2).generation == gen and raw(2).flags & TF_PRESERVE

    # A batch write the kernel refuses is made one word at a time.
    def refused(*_a: Any) -> None:
        raise Exception("BPF_MAP_UPDATE_BATCH has failed: injected")  # noqa: TRY002 -- bcc's

    monkeypatch.setattr(t.tunnels_map, "items_update_batch", refused)
    with t.tunnel_writes():
        t.set_tunnel(1, up=False)
        t.set_tunnel(2, up=True)
    assert raw(1).state != TUNNEL_UP and raw(2).state == TUNNEL_UP

    # One word the kernel refuses does not stop the others: each is tried, then it raises.
    real = t.tunnels_map

    class OneRefused:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def __getitem__(self, key: Any) -> Any:
            return real[key]

        def __setitem__(self, key: Any, value: Any) -> None:
            if key.value == 1:
                raise OSError(errno.E2BIG, "injected: this word's write fails")
            real[key] = value

    monkeypatch.setattr(t, "tunnels_map", OneRefused())
    with pytest.raises(OSError, match="injected"), t.tunnel_writes():
        t.set_tunnel(1, up=True)
        t.set_tunnel(2, up=False)
    assert raw(1).state != TUNNEL_UP and raw(2).state != TUNNEL_UP
