"""``flowpin daemon``: strongSwan's SA events in, data-path map writes out.

Who writes what:
- The VICI follower thread applies SA events (resyncs, events, disconnections) the moment it
  reads them: registry, then tunnel states and selectors in the maps.
- The loop runs changes asked over the control socket (sysopt, clear conn, reload), SIGHUP,
  the data path's event ring (demand, map full, flows removed on the packet path) and demand
  initiation.
- Both take ``lock`` around registry and map writes: one writer at a time, and writes in
  the order of events.
- Beside them, without the lock: the sweeper thread (expiry and teardown; it re-checks
  every flow it removes, and counts the flows it keeps by tunnel: controlplane.flow_counts),
  the reporter thread (tunnel UP/DOWN lines, reclassify-vpn), the teardown thread (logs
  the flows the packet path removed, taking the lock once per batch for tunnel names) and
  the read-only commands (`show …`, on a snapshot of the registry), so that none of them
  ever delays an SA event.

Safety rules (see docs/fail-closed.md):
- The WAN guard (bpf/lib/guard.h) on the WAN interface(s) drops any packet of a tunnel's
  selectors that would cross the WAN unprotected, whatever the tunnel's state: it needs
  neither this daemon nor charon to be alive or quick.
- At start, before anything is compiled, every tunnel of the pinned maps is set DOWN
  (generation kept): held flows stay held, nothing of a tunnel passes as if it were up
  while its state is unknown -- also when the start then fails. The tunnels the last run
  knew are restored DOWN with their selectors before charon is heard.
- A connection charon no longer lists keeps its tunnel DOWN for
  ``forget-unconfigured-after`` before it is forgotten (charon restarting, conns not loaded
  yet): its held flows wait, its traffic is refused.
- charon unreachable = every CHILD_SA gone: tunnels DOWN (pinned or torn down per
  preserve-vpn-flows), until a resync says otherwise.
- Stopping sets every tunnel DOWN and leaves the programs attached and the maps pinned:
  flows outlive a restart or upgrade, held until the next daemon has heard charon, and a
  gateway without its daemon still drops what it must; ``--purge`` removes everything.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from controlplane import commands, protocols, reclassify, resume, sysopt, wan
from controlplane import config as config_mod
from controlplane.addresses import net_repr, net_text
from controlplane.config import Config, ConfigError
from controlplane.control import ControlServer
from controlplane.datapath import Datapath, DatapathConfig, hold_pinned_tunnels
from controlplane.demand import Initiations
from controlplane.flow_counts import TunnelCounts
from controlplane.flow_table import FlowTable
from controlplane.flows import RemovedFlow
from controlplane.hooks import HookWatch, hooked
from controlplane.journal import error_line, journal_handler
from controlplane.known_selectors import KnownSelectors
from controlplane.messages import LastProblem, Msg, Sev, emit, line, teardown_line
from controlplane.metrics import Latency
from controlplane.notify import NotifyError, ServiceNotifier, announce_ready
from controlplane.selectors import Selector
from controlplane.snapshot import Snapshot
from controlplane.sweeper import Sweeper, removed_from_events
from controlplane.tunnel import Transition, TunnelKey, TunnelRegistry
from controlplane.tunnel_ids import TunnelIds
from controlplane.tunnel_maps import TunnelMaps
from vici_glue import session as vs
from vici_glue.events import parse_conns
from vici_glue.follower import Disconnected, Follower, Received, Resync

log = logging.getLogger("flowpin")
STATE_ROOT = Path("/run/flowpin")
# Lost data-path events are told at most once per this many seconds (they are counted
# and exported exactly; a line per lost record would itself flood the log).
LOST_REPORT_INTERVAL = 10.0
# The longest a background thread waits for an SA event being applied (see give_way).
GIVE_WAY_MAX_S = 0.1
# Allocations between two collections of the youngest generation (Python's default: 700;
# see _settle_gc).
GC_YOUNG_THRESHOLD = 10_000




class Daemon:
    def __init__(self, cfg: Config, *, lan_if_label: str = "inside",
                 state_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.state_dir = state_dir or STATE_ROOT / cfg.instance
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_path = self.state_dir / "runtime.json"
        self.runtime = sysopt.load(self.runtime_path)  # sysopt set at run time
        self.inbox: queue.Queue[Any] = queue.Queue()
        # One writer at a time: the loop and the follower thread (which applies SA events
        # itself, the moment it reads them) take this lock around registry and map writes.
        self.lock = threading.RLock()
        # SA events first: set while no SA event (or resync, or charon lost) is being
        # applied. The threads beside the loop that run for seconds at scale (sweeper,
        # teardown logging) wait on it at short intervals, so that an event's map writes
        # do not queue for the GIL behind them after each syscall.
        self.no_event_pending = threading.Event()
        self.no_event_pending.set()
        self._events_applying = 0  # under the lock
        self._event_seq = 0  # events flagged so far (under the lock)
        self._gave_up_on = -1  # the event a give_way waited for in vain (see give_way)
        self.ids = TunnelIds(self.state_dir / "tunnels.json")
        self.registry = TunnelRegistry(self.ids, grace=cfg.forget_unconfigured_after)
        self.known = KnownSelectors(self.state_dir / "selectors.json")
        self.wan_guarded: list[str] = []
        self.problems = LastProblem()  # listens from start() to stop()
        self._forgetting = False
        self.dp: Datapath | None = None
        self.table: FlowTable | None = None  # flows, counters, events
        self.maps: TunnelMaps | None = None  # where tunnel changes are written
        self.sweeper: Sweeper | None = None
        self.resume: resume.ResumeReport | None = None  # held flows moving again after UP
        self.follower: Follower | None = None
        self.latency = Latency()
        self._batched_latencies: int | None = None  # a batch of transitions' samples
        self.stats: dict[str, int] = {"events": 0, "resyncs": 0, "disconnects": 0,
                                      "initiations": 0, "initiation_failures": 0,
                                      "teardowns_logged": 0, "reclassified": 0,
                                      "table_full": 0, "reloads": 0, "reload_errors": 0,
                                      "selectors_refused": 0, "tunnels_refused": 0,
                                      "tunnel_ids_freed": 0, "nonvpn_budget": 0}
        self.initiations = Initiations(lambda: self.cfg, self.stats)
        self.charon_up = False
        self.ipsec_backend = "unknown"  # as charon said when last (re)connected
        self.started = time.time()
        self._stop = threading.Event()
        self._sweep_now = threading.Event()
        self._reports: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.Queue()
        self._teardowns: queue.Queue[list[Any]] = queue.Queue()  # FLOW_REMOVED records
        self._lost_checked = 0.0
        self._lost_seen = (0, 0)  # EVENT_LOST, REMOVED_LOST when last told
        self._sweeper_thread: threading.Thread | None = None
        self.lan_label = lan_if_label
        self.control: Any = None
        self.metrics: Any = None
        self._selectors: set[Selector] | None = None
        self._selector_sig: dict[int, Any] | None = None  # see _sync_selectors
        # SIGHUP only sets this (a plain store is safe in a signal handler; queue.Queue.put
        # takes a lock the interrupted code may hold); the loop reloads within 50 ms.
        self.reload_requested = False
        self.hooks: HookWatch | None = None
        self._selectors_ok = True  # the last selector compile succeeded
        # systemd (Type=notify): told READY once charon's state is first applied, which
        # sets this (a resync, or charon unreachable: every tunnel held DOWN).
        self.service = ServiceNotifier(enabled=False)
        self.charon_heard = threading.Event()

    # --- sysopt (changed from the CLI, kept across daemon restarts) ----------------------
    def preserve_for(self, key: TunnelKey) -> bool:
        return sysopt.preserve_for(self.cfg, self.runtime, key)

    def reclassify(self) -> bool:
        return sysopt.reclassify(self.cfg, self.runtime)

    def set_sysopt(self, option: str, on: bool, tunnel: str | None) -> None:
        """``[no] sysopt connection OPTION [tunnel T]``: kept in the state directory,
        effective at once (on tunnels already up too)."""
        sysopt.set_option(self.runtime, option, on, tunnel)
        sysopt.save(self.runtime_path, self.runtime)
        self.apply_sysopt()
        emit(Sev.NOTICE, Msg.SYSOPT_CHANGED, f"{'' if on else 'no '}sysopt connection "
             f"{option}" + (f" tunnel {tunnel}" if tunnel else "") + " (takes effect now, "
             "on tunnels already up too)")

    # --- start / stop -------------------------------------------------------------------
    def start(self) -> None:
        log.addHandler(self.problems)
        cfg = self.cfg
        config_mod.check_runnable(cfg)
        dpc = DatapathConfig(instance=cfg.instance, flows4_max=cfg.flow_table_size,
                             flows6_max=max(1024, cfg.flow_table_size // 4),
                             pickup_s=int(cfg.pickup_window),
                             nonvpn_percent=cfg.nonvpn_flow_share, attach=cfg.attach,
                             btf=cfg.btf)
        # Before the compile, which takes seconds and may fail: until charon has been
        # heard no tunnel is known to be up, and the programs of the last run are still
        # attached. Hold, never pass as if up.
        held = hold_pinned_tunnels(dpc.instance)
        if held:
            emit(Sev.NOTICE, Msg.DAEMON, f"{held} tunnels of the pinned data path set DOWN "
                 "until charon is heard")
        self.use_datapath(Datapath(dpc).load())
        assert self.table is not None and self.dp is not None
        for t in self.table.tunnels():  # a previous run's state: the same rule
            if t.id and t.up:
                self.table.set_tunnel(t.id, up=False)
        with self.lock:
            restored = []
            for key, (local, remote) in self.known.load().items():
                restored += self.registry.restore(key, local, remote)
            self.apply_transitions(restored, time.monotonic())
        for ifname in cfg.lan_interfaces:
            self.dp.attach(ifname)
        kick = resume.configure(self.table, cfg.lan_interfaces[0], int(cfg.kick_interval * 1000),
                                cfg.kick_budget)
        self._guard_wan(cfg.wan_interfaces if cfg.wan_interfaces is not None
                        else wan.default_route_interfaces())
        self._watch_hooks()
        emit(Sev.INFO, Msg.DAEMON, f"data path {cfg.instance} attached to "
             f"{', '.join(cfg.lan_interfaces)} with {self._attach_report()}; WAN guard on "
             f"{', '.join(self.wan_guarded) or 'no interface'}; "
             f"{self.table.flow_count()} flows in the "
             f"table; preserve-vpn-flows {'on' if self.preserve_for(('', '')) else 'off'}; "
             f"{kick if cfg.resume_kick else 'resume kick off'}")
        self._sweeper_thread = threading.Thread(target=self._sweeper_loop, name="sweeper",
                                                daemon=True)
        self._sweep_now.set()  # the first counts (flow_counts) at once, not an interval later
        self._sweeper_thread.start()
        threading.Thread(target=self._reporter_loop, name="reporter", daemon=True).start()
        threading.Thread(target=self._teardown_loop, name="teardowns", daemon=True).start()
        if self.table is not None:  # what was lost before this daemon is not news
            c = self.table.counters()
            self._lost_seen = (c.get("EVENT_LOST", 0), c.get("REMOVED_LOST", 0))
        self.follower = Follower(cfg.vici_socket, _Apply(self)).start()
        self.control = ControlServer(cfg.control_path, self.request).start()
        if cfg.metrics_listen:
            from controlplane.metrics import MetricsServer

            self.metrics = MetricsServer(cfg.metrics_listen, self.metrics_snapshot).start()

    def _attach_report(self) -> str:
        """``tcx links (auto: the kernel has tcx), 4 updated in place``: the attach mode,
        why, and what the attach did to hooks a previous run left (updated in place, or
        created)."""
        assert self.dp is not None and self.dp.probe is not None
        done: dict[str, int] = {}
        for what in self.dp.last_attach.values():
            done[what] = done.get(what, 0) + 1
        what = "tcx links" if self.dp.mode == "tcx" else "clsact filters"
        how = ", ".join(f"{n} {w}" + (" in place" if w in ("updated", "replaced") else "")
                        for w, n in sorted(done.items()))
        return f"{what} ({self.dp.probe.why()})" + (
            f", {how}" if how else "")

    def _guard_wan(self, ifnames: Any) -> None:
        """Attach the WAN guard on each of ``ifnames`` not guarded yet (LAN interfaces are
        never a WAN). A missing WAN guard is an error an admin must see, not a stop: the
        LAN-side data path still holds what it knows."""
        assert self.dp is not None
        for ifname in ifnames:
            if ifname in self.wan_guarded or ifname in self.cfg.lan_interfaces:
                continue
            try:
                self.dp.attach_wan(ifname)
            except Exception as exc:  # noqa: BLE001 -- named in the log, the rest goes on
                emit(Sev.ERROR, Msg.WAN_GUARD, f"WAN guard not attached on {ifname}: {exc}")
                continue
            self.wan_guarded.append(ifname)
            emit(Sev.INFO, Msg.WAN_GUARD, f"WAN guard attached on {ifname}: tunnel traffic "
                 "never crosses it in clear")
        if not self.wan_guarded:
            emit(Sev.ERROR, Msg.WAN_GUARD, "no WAN interface guarded (no default route and "
                 "datapath.wan-interfaces not set): only the LAN-side data path holds "
                 "tunnel traffic")

    def _watch_hooks(self) -> None:
        """Re-attach lost filters, LAN and WAN guard (clsact deleted, interface re-created),
        logged and counted: without them that side forwards everything unchecked."""
        assert self.dp is not None

        def repaired(ifname: str, role: str, missing: list[str], ms: float) -> None:
            self.stats["hooks_reattached"] += 1
            what = "WAN guard" if role == "wan" else "LAN"
            if self.dp is not None and self.dp.mode == "tcx":
                kind, cause = "link", "link detached or defunct: interface re-created"
            else:
                kind, cause = "filter", "clsact deleted or interface re-created"
            emit(Sev.WARNING, Msg.HOOK_REATTACHED, f"interface {ifname} had lost flowpin's "
                 f"{what} {' and '.join(missing)} {kind}{'s' if len(missing) > 1 else ''} "
                 f"({cause}): re-attached in {ms:.0f} ms")

        def failed(ifname: str, text: str) -> None:
            self.stats["hook_errors"] += 1
            emit(Sev.ERROR, Msg.HOOK_REATTACHED, text)

        self.stats.setdefault("hooks_reattached", 0)
        self.stats.setdefault("hook_errors", 0)
        def interfaces() -> list[tuple[str, str]]:
            return hooked(self.cfg.lan_interfaces, list(self.wan_guarded))

        if self.cfg.hooks_watch_interval <= 0:
            emit(Sev.WARNING, Msg.HOOK_REATTACHED, "hooks watch off (datapath."
                 "hooks-watch-interval = 0): a filter another tool removes stays removed")
            return
        self.hooks = HookWatch(self.dp, interfaces, interval=self.cfg.hooks_watch_interval,
                               on_reattach=repaired, on_error=failed).start()

    def use_datapath(self, dp: Datapath) -> None:
        """Take a loaded data path (``start`` loads the configured one; benchmarks and
        tests hand in a private one)."""
        self.dp = dp
        self.table = dp.table
        self.sweeper = Sweeper(dp.table, self.cfg.timeouts, give_way=self.give_way,
                               on_removed=self.log_removed)
        self.resume = resume.ResumeReport(dp.table, give_way=self.give_way)
        self.use_maps(dp.table)

    def use_maps(self, maps: TunnelMaps) -> None:
        """Write tunnel changes to ``maps`` (the data path's table; the unit tests' in-memory
        one)."""
        self.maps = maps
        self.ids.refuse_id = maps.refuse_id
        maps.set_reclassify(self.reclassify())

    def stop(self, purge: bool = False) -> None:
        self.service.stopping()
        log.removeHandler(self.problems)
        if self.resume:
            self.resume.stop()
        if self.hooks:  # first: a purge below detaches, nothing must attach again
            self.hooks.stop()
        self._stop.set()
        self._sweep_now.set()
        if self._sweeper_thread:
            self._sweeper_thread.join(5)
        if self.follower:
            self.follower.stop()
        if self.control:
            self.control.stop()
        if self.metrics:
            self.metrics.stop()
        if self.dp:
            if purge:
                for ifname in [*self.cfg.lan_interfaces, *self.wan_guarded]:
                    self.dp.detach(ifname)
                self.dp.purge_pins()
                emit(Sev.INFO, Msg.DAEMON, "stopped; programs detached and maps removed")
            else:
                # Nobody follows charon from now on: a tunnel left UP would pass its
                # traffic after its SA is gone. DOWN holds it until the next daemon knows.
                with self.lock:
                    down = [t.id for t in self.table.tunnels() if t.id and t.up] \
                        if self.table else []
                    for tid in down:
                        self.table.set_tunnel(tid, up=False)  # type: ignore[union-attr]
                emit(Sev.INFO, Msg.DAEMON, f"stopped; data path left attached with "
                     f"{self.table.flow_count() if self.table else 0} flows pinned in bpffs; "
                     f"{len(down)} tunnels held DOWN until the daemon is back")
            self.dp.close()

    def on_sighup(self, _sig: int = 0, _frame: object = None) -> None:
        """SIGHUP: reload the configuration file. Runs as a signal handler, between any
        two bytecodes of the main thread: it only stores a flag, which the loop reads."""
        self.reload_requested = True

    def request(self, kind: str, payload: Any = None) -> Any:
        """A control-socket request (see :mod:`controlplane.commands`): a read-only command
        runs in the caller's thread on a snapshot taken on the loop; a change runs on the
        loop."""
        cmd = commands.lookup(kind)
        args = payload or {}
        if cmd.read_only:
            return cmd.run(self.on_loop(self.snapshot, kind), args)
        return self.on_loop(lambda: cmd.run(self, args), kind)

    def snapshot(self) -> Snapshot:
        """The state read-only commands see (call it on the loop or under the lock)."""
        stats = dict(self.stats)
        stats["vici_decode_errors"] = self.follower.decode_errors if self.follower else 0
        assert self.table is not None and self.sweeper is not None
        return Snapshot(
            cfg=self.cfg, sysopt=json.loads(json.dumps(self.runtime)),
            tunnels=self.registry.copy_tunnels(),
            demand={k: replace(d) for k, d in self.initiations.pending.items()},
            stats=stats, latency_ms=tuple(self.latency.samples),
            latency_histogram=self.latency.histogram(), charon_up=self.charon_up,
            ipsec_backend=self.ipsec_backend, started=self.started,
            wan_guarded=tuple(self.wan_guarded), last_problem=self.problems.last,
            resumed=self.resume.totals() if self.resume else {},
            table=self.table, now_s=self.sweeper.now_s, counts=self.sweeper.counts,
            attach=self.dp.mode if self.dp else "clsact",
            attach_why=self.dp.probe.describe() if self.dp and self.dp.probe else "",
            link_fd=self._link_fd if self.dp and self.dp.mode == "tcx" else None)

    def _link_fd(self, ifname: str, hook: str) -> int | None:
        assert self.dp is not None
        return self.dp.link_fd(ifname, None, hook)

    def on_loop(self, fn: Callable[[], Any], what: str = "the request",
                wait: float = 10.0) -> Any:
        """From another thread: run ``fn`` on the main loop (under the lock); return its
        answer or raise its exception."""
        box: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.inbox.put(_Call(fn, box))
        try:
            ok, value = box.get(timeout=wait)
        except queue.Empty:
            raise TimeoutError(f"daemon busy: no answer to {what} within {wait} s") from None
        if not ok:
            raise value
        return value

    def request_stop(self) -> None:
        """Make :meth:`run` return (SIGTERM, tests)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether the daemon was asked to stop."""
        return self._stop.is_set()

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        assert self.table is not None and self.sweeper is not None
        while not self._stop.is_set():
            try:
                item = self.inbox.get(timeout=0.05)
            except queue.Empty:
                item = None
            try:
                if self.reload_requested:  # set by SIGHUP (see main)
                    self.reload_requested = False
                    with self.lock, contextlib.suppress(ConfigError):  # logged by reload
                        self.reload(self.cfg.path)
                if item is not None:
                    self.handle(item)
                events = self.table.read_events(0)
                removed = [ev for ev in events if ev.type == "FLOW_REMOVED"]
                if removed:  # logged beside the loop, without the lock
                    self._teardowns.put(removed)
                    events = [ev for ev in events if ev.type != "FLOW_REMOVED"]
                self._check_lost(time.monotonic())
                with self.lock:
                    for ev in events:
                        self.on_datapath_event(ev)
                    self.initiations.tick(time.monotonic(), self.registry, self.runtime,
                                          self.charon_up)
                    self._forget_tick()
                self.service.tick(time.monotonic())
            except Exception:  # noqa: BLE001 -- one bad item must not stop the gateway
                self.stats["internal_errors"] = self.stats.get("internal_errors", 0) + 1
                log.exception("%s", line(Sev.ERROR, Msg.DAEMON, "internal error (the "
                                         "daemon goes on; please report)"))

    def handle(self, item: Received | Resync | Disconnected | _Call) -> None:
        """Apply one thing that happened: what the follower read from charon (an SA event,
        a resync, charon gone), or a call :meth:`on_loop` queued. Takes the lock."""
        urgent = not isinstance(item, _Call)
        with self.lock:
            # Cleared only while this thread holds the lock: a thread that waits in
            # give_way never holds it (a change command logging its teardowns on the loop,
            # under the lock, would otherwise wait for an event that waits for the lock).
            if urgent:
                self._events_applying += 1
                self._event_seq += 1
                self.no_event_pending.clear()
            try:
                self._handle(item)
                if isinstance(item, Resync | Disconnected):
                    self.charon_heard.set()
            finally:
                if urgent:
                    self._events_applying -= 1
                    if not self._events_applying:
                        self.no_event_pending.set()

    def give_way(self) -> None:
        """Called often by the threads beside the loop: while an SA event is being applied,
        wait until it is written (bounded: a stuck event never stops a sweep for long)."""
        if self.no_event_pending.is_set():
            return
        seq = self._event_seq
        if seq == self._gave_up_on:
            return  # waited for this one already: an event that slow is not held up by us
        if not self.no_event_pending.wait(GIVE_WAY_MAX_S):
            self._gave_up_on = seq

    def _handle(self, item: Received | Resync | Disconnected | _Call) -> None:
        if isinstance(item, Received):
            self.stats["events"] += 1
            self.apply_transitions(self.registry.on_event(item.event), item.received)
        elif isinstance(item, Resync):
            self.stats["resyncs"] += 1
            if not self.charon_up:
                emit(Sev.NOTICE, Msg.CHARON_FOUND, f"connected to charon at "
                     f"{self.cfg.vici_socket} (IPsec backend {item.backend}): "
                     f"{len(item.conns)} tunnels configured, "
                     f"{sum(len(s.children) for s in item.sas)} CHILD_SAs installed")
            self.ipsec_backend = item.backend
            self.charon_up = True
            with self.ids.batch():  # the ids saved once, before any map write
                transitions = self.registry.resync(item.conns, item.sas)
            self.apply_transitions(transitions, item.received)
            self._later(_settle_gc)
        elif isinstance(item, Disconnected):
            self.stats["disconnects"] += 1
            if self.charon_up or not self.stats["resyncs"]:
                emit(Sev.WARNING, Msg.CHARON_LOST, f"charon at {self.cfg.vici_socket} "
                     f"unreachable ({item.reason}): its SAs are gone with it")
            self.charon_up = False
            self.apply_transitions(self.registry.on_disconnect(), item.received)
        elif isinstance(item, _Call):
            try:
                item.box.put((True, item.fn()))
            except Exception as exc:  # noqa: BLE001 -- reported to the caller
                item.box.put((False, exc))

    def _forget_tick(self) -> None:
        """Tunnels missing from charon past the grace period: check ``list-conns`` afresh
        (VICI announces no conn loads), beside the loop, then forget what is still gone."""
        if self._forgetting or not self.registry.missing_expired():
            return
        self._forgetting = True

        def check() -> None:
            try:
                sess = vs.connect(self.cfg.vici_socket, timeout=2.0)
                try:
                    conns = parse_conns(list(sess.list_conns()))
                finally:
                    sess.transport.close()
                listed = {(c.conn, c.child) for c in conns}
                with self.lock:
                    self.apply_transitions(self.registry.forget_missing(listed), time.monotonic())
            except Exception as exc:  # noqa: BLE001 -- charon away: keep them, try later
                log.debug("list-conns for missing tunnels: %s", exc)
                time.sleep(1.0)
            finally:
                self._forgetting = False

        threading.Thread(target=check, name="forget-missing", daemon=True).start()

    # --- transitions -> data path ---------------------------------------------------------
    def apply_transitions(self, transitions: list[Transition], received: float,
                          sync: bool = True) -> None:
        """Write what the registry says changed into the data path: selectors first, then
        each tunnel's state (``received``: when the event came, for the latency). The
        caller holds the lock (:meth:`handle` takes it)."""
        assert self.maps is not None
        if sync and (not self._selectors_ok or any(tr.kind in ("configured", "up", "removed")
                                                     for tr in transitions)):
            # Selectors first: a tunnel goes UP only once its traffic maps to it.
            try:
                self._sync_selectors()
                if not self._selectors_ok:  # tunnels held DOWN meanwhile get their state
                    for t in self.registry.tunnels.values():
                        if t.tunnel_id != self.maps.refuse_id:
                            self.maps.set_tunnel(t.tunnel_id, up=t.state == "UP")
                self._selectors_ok = True
            except Exception:  # noqa: BLE001 -- the other transitions still apply
                self._selectors_ok = False
                self.stats["internal_errors"] = self.stats.get("internal_errors", 0) + 1
                log.exception("%s", line(Sev.ERROR, Msg.DAEMON, "compiling the selectors "
                                         "failed: tunnels that came up stay DOWN, the rest "
                                         "applies (please report)"))
                transitions = [tr for tr in transitions if tr.kind != "up"]
        if len(transitions) > 1:
            # One at a time, so that one tunnel's failure never stops another's (a DOWN
            # above all must be written); their control words in one batch write at the
            # end (a resync of 1,000 tunnels, charon lost with all of them up), and their
            # event -> map times taken once it is written.
            self._batched_latencies = 0
            try:
                with self.maps.tunnel_writes():
                    for tr in transitions:
                        try:
                            self.apply_transitions([tr], received, sync=False)
                        except Exception:  # noqa: BLE001 -- logged; the next tunnel goes on
                            self.stats["internal_errors"] = \
                                self.stats.get("internal_errors", 0) + 1
                            log.exception("%s", line(
                                Sev.ERROR, Msg.DAEMON, f"Tunnel {tr.tunnel.name}: applying "
                                f"'{tr.kind}' failed (the other tunnels go on; please report)"))
            finally:
                n, self._batched_latencies = self._batched_latencies, None
            ms = (time.monotonic() - received) * 1000
            for _ in range(n or 0):
                self.latency.add(ms)
            return
        for tr in transitions:
            t = tr.tunnel
            if t.tunnel_id == self.maps.refuse_id:
                self._refused_tunnel(tr)
                continue
            preserve = self.preserve_for(t.key)
            if tr.kind == "configured":
                self.maps.set_tunnel(t.tunnel_id, up=t.state == "UP" and self._selectors_ok,
                                      preserve=preserve)
                self._set_kick(t.tunnel_id, t.key)
                emit(Sev.INFO, Msg.TUNNEL_CONFIGURED, f"Tunnel {t.name} (id {t.tunnel_id}) "
                     f"selectors {_ts(t.local_ts)} === {_ts(t.remote_ts)}, "
                     f"preserve-vpn-flows {'on' if preserve else 'off'}")
            elif tr.kind == "up":
                if tr.previous_peer:
                    gen = self.maps.bump_generation(t.tunnel_id)
                    emit(Sev.WARNING, Msg.PEER_CHANGED, f"Tunnel {t.name} peer changed from "
                         f"{tr.previous_peer} to {t.peer_id}: its flows are torn down "
                         f"(generation {gen}), a different peer never inherits them")
                self.maps.set_tunnel(t.tunnel_id, up=True, preserve=preserve)
                self._map_written(received)
                if self.resume is not None:
                    self.resume.up(t.tunnel_id, t.name)
                self.initiations.satisfied(t.key)
                if self.cfg.wan_interfaces is None and t.peer_host and self.dp is not None:
                    self._later(self._guard_peer_route, t.peer_host)
                text = f"Tunnel {t.name} UP, peer {t.peer_id} ({tr.reason})"
                self._later(self._report_up, t.tunnel_id, text,
                            (t.name, t.local_ts, t.remote_ts) if self.reclassify() else None)
            elif tr.kind == "down":
                if preserve:
                    self.maps.set_tunnel(t.tunnel_id, up=False, preserve=True)
                    if self.resume is not None:
                        self.resume.down(t.tunnel_id)
                else:
                    gen = self.maps.tunnel(t.tunnel_id).generation + 1
                    self.maps.set_tunnel(t.tunnel_id, up=False, generation=gen,
                                          preserve=False)
                self._map_written(received)
                self._later(self._report_down, t.tunnel_id,
                            f"Tunnel {t.name} DOWN ({tr.reason})", preserve)
                self._sweep()  # log the teardowns now, not a sweep interval later
            elif tr.kind == "missing":
                emit(Sev.WARNING, Msg.TUNNEL_CONFIGURED, f"Tunnel {t.name} not configured in "
                     f"charon: kept DOWN with its selectors for "
                     f"{self.cfg.forget_unconfigured_after:.0f} s (held flows wait, nothing "
                     "of it leaves in clear)")
            elif tr.kind == "removed":
                gen = self.maps.tunnel(t.tunnel_id).generation + 1
                self.maps.set_tunnel(t.tunnel_id, up=False, generation=gen)
                self.ids.retire(t.key)
                emit(Sev.INFO, Msg.TUNNEL_CONFIGURED, f"Tunnel {t.name} no longer "
                     "configured: selectors removed, flows torn down")
                self._sweep()

    def _map_written(self, received: float) -> None:
        """One event -> map time: now, or when the batch being applied is written."""
        if self._batched_latencies is not None:
            self._batched_latencies += 1
        else:
            self.latency.add((time.monotonic() - received) * 1000)

    def _sync_selectors(self) -> None:
        """Make the data path's selectors those of the registry's tunnels (one compile per
        family, only when something changed)."""
        assert self.maps is not None
        # Each tunnel's selectors as they stand: compared first (a dict of the registry's
        # own tuples), so that a tunnel coming UP among 1,000 does not rebuild 2,000 pairs
        # to find nothing changed (milliseconds on the SA event's path).
        sig = {t.tunnel_id: (t.local_ts, t.remote_ts) for t in self.registry.tunnels.values()}
        if sig == self._selector_sig:
            return
        want = {Selector(loc, rem, t.tunnel_id)
                for t in self.registry.tunnels.values()
                for loc in t.local_ts for rem in t.remote_ts if loc.version == rem.version}
        if want != self._selectors:
            # Sorted by id: when a remote prefix has more pairs than the data path holds,
            # the longest-configured tunnels keep their slots (see selectors.plan).
            overflows = self.maps.replace_selectors(
                sorted(want, key=_selector_order))
            self._selectors = want
            self.known.save(self.registry.tunnels.values())
            for o in overflows:
                self.stats["selectors_refused"] += 1
                emit(Sev.WARNING, Msg.SELECTORS_REFUSED, o.text(self._tunnel_label))
        self._selector_sig = sig

    def _tunnel_label(self, tunnel_id: int) -> str:
        t = self.registry.by_id(tunnel_id)
        return f"Tunnel {t.name}" if t else f"tunnel id {tunnel_id}"

    def _refused_tunnel(self, tr: Transition) -> None:
        """A tunnel without a data-path id of its own (every id in use): its selectors
        point at the refusing id, so its traffic is dropped, never passed in clear; its
        state is not written (the refusing id must stay DOWN). The others go on."""
        if tr.kind == "configured":
            self.stats["tunnels_refused"] += 1
            emit(Sev.ERROR, Msg.TUNNEL_REFUSED, f"Tunnel {tr.tunnel.name}: no free "
                 f"data-path tunnel id (ids 1..{self.maps.refuse_id - 1} in use): its "
                 f"traffic {_ts(tr.tunnel.local_ts)} === {_ts(tr.tunnel.remote_ts)} is "
                 "refused until an id is free and the daemon restarts")

    def _counted(self, tunnel_id: int) -> TunnelCounts:
        """The tunnel's flows as the last sweep counted them (controlplane.flow_counts):
        a dict read, where decoding the table cost seconds at a million flows."""
        if self.sweeper is None or self.maps is None:
            return TunnelCounts()
        return self.sweeper.counts.tunnel(self.maps.tunnel(tunnel_id), tunnel_id)

    # --- reports: counted and logged beside the loop -----------------------------------
    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the reporter thread: counting flows reads whole maps (ms at
        scale) and must never delay the next SA event."""
        self._reports.put((fn, args))

    def _reporter_loop(self) -> None:
        while not self._stop.is_set():
            try:
                fn, args = self._reports.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                fn(*args)
            except Exception:  # noqa: BLE001
                log.exception("%s", line(Sev.ERROR, Msg.DAEMON, "report failed"))

    def _guard_peer_route(self, peer_host: str) -> None:
        """Auto WAN: the interface towards a tunnel's peer is a WAN too (a gateway without
        a default route still sends its leaks that way)."""
        ifname = wan.route_interface(peer_host)
        if ifname and ifname not in self.wan_guarded:
            with self.lock:
                self._guard_wan([ifname])

    def _report_up(self, tunnel_id: int, text: str, reclassify: Any) -> None:
        emit(Sev.INFO, Msg.TUNNEL_UP_RESUMED, f"{text}; {self._counted(tunnel_id).flows} "
             "flows resumed")
        if reclassify:
            self._reclassify(*reclassify)

    def _report_down(self, tunnel_id: int, text: str, preserve: bool) -> None:
        if preserve:
            emit(Sev.INFO, Msg.TUNNEL_DOWN_PINNED, f"{text}; preserve-vpn-flows: "
                 f"{self._counted(tunnel_id).tcp} TCP flows pinned, held until the "
                 "tunnel is back; other flows torn down")
        else:
            emit(Sev.INFO, Msg.TUNNEL_DOWN_TORN, f"{text}; preserve-vpn-flows off: its flows "
                 "are torn down")

    def _reclassify(self, name: str, local_ts: Any, remote_ts: Any) -> None:
        """reclassify-vpn, on the reporter thread (see :mod:`controlplane.reclassify`)."""
        assert self.table is not None
        flows, ct = reclassify.clear(self.table, local_ts, remote_ts)
        self.stats["reclassified"] += flows
        if flows or ct:
            emit(Sev.INFO, Msg.RECLASSIFIED, f"reclassify-vpn: Tunnel {name} UP: "
                 f"{flows} non-VPN flows and {ct} conntrack entries matching its "
                 "selectors cleared")

    # --- sweeper and data-path events ------------------------------------------------------
    def _sweep(self) -> None:
        """Ask for a sweep now (the sweeper thread runs it; the loop never waits for it)."""
        self._sweep_now.set()

    def _sweeper_loop(self) -> None:
        """The sweeper thread: expiry and teardown cost milliseconds per sweep at scale, so
        they run beside the loop, not in it -- an SA event never waits behind a sweep.
        Concurrent map access is safe: the sweeper re-checks every flow it removes."""
        assert self.sweeper is not None
        while not self._stop.is_set():
            self._sweep_now.wait(self.cfg.sweep_interval)
            self._sweep_now.clear()
            if self._stop.is_set():
                break
            try:
                self.log_removed(self.sweeper.sweep())
                self.free_tunnel_ids()
            except Exception:  # noqa: BLE001 -- the next sweep tries again
                log.exception("%s", line(Sev.ERROR, Msg.DAEMON, "sweep failed"))

    def free_tunnel_ids(self) -> None:
        """Ids of removed tunnels become free once the sweeps have removed their flows
        (read here, beside the loop: a full flow-table read costs ms at scale)."""
        if not self.ids.retired or self.maps is None:
            return
        in_use = self.maps.tunnel_ids_in_use()
        with self.lock:
            retired = {tid for tid in self.ids.retired
                       if self.registry.by_id(tid) is None}  # not configured again since
            freed = self.ids.free_unused(in_use | (self.ids.retired - retired))
            for tid in freed:
                self.maps.reset_tunnel_stats(tid)
                if self.resume is not None:
                    self.resume.forget(tid)
            self.stats["tunnel_ids_freed"] += len(freed)

    def log_removed(self, removed: list[RemovedFlow]) -> None:
        """Log a batch of teardowns (302014/302016/302021). The lock is taken once per
        batch, for the tunnel names, never per flow: a teardown of 100,000 flows must not
        stand between an SA event and the lock."""
        if not removed:
            return
        names = self._tunnel_names({r.tunnel_id for r in removed})
        lan = self._lan_name()
        idle = self.no_event_pending
        for r in removed:
            if not idle.is_set():  # an SA event first
                self.give_way()
            log.info(teardown_line(r, lan_if=lan, tunnel_if=names[r.tunnel_id]))
        self.stats["teardowns_logged"] += len(removed)

    def _lan_name(self) -> str:
        return self.cfg.lan_interfaces[0] if self.cfg.lan_interfaces else "inside"

    def _tunnel_names(self, tunnel_ids: set[int]) -> dict[int, str]:
        """Interface-like names of tunnels for teardown lines, under the lock once (the
        sweeper and teardown threads ask too)."""
        with self.lock:
            found = {tid: self.registry.by_id(tid) for tid in tunnel_ids}
        return {tid: f"vpn-{t.key[0]}" if t else ("outside" if tid == 0 else "vpn")
                for tid, t in found.items()}

    def _teardown_loop(self) -> None:
        """The teardown thread: logs the flows the packet path removed (FLOW_REMOVED
        records of the ring), a batch at a time, beside the loop. At tens of thousands a
        second their log lines would otherwise hold the loop (scrapes, show commands) and,
        under the lock, every SA event."""
        while not self._stop.is_set():
            try:
                batch = self._teardowns.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                while len(batch) < 4096:
                    batch += self._teardowns.get_nowait()
            except queue.Empty:
                pass
            try:
                self.log_removed(removed_from_events(batch))
            except Exception:  # noqa: BLE001
                log.exception("%s", line(Sev.ERROR, Msg.DAEMON, "logging teardowns failed"))

    def _check_lost(self, now: float) -> None:
        """Records the data path could not put in the ring (full): counted by the data path
        (exported), told here once per interval, not once per record."""
        if now - self._lost_checked < LOST_REPORT_INTERVAL or self.table is None:
            return
        self._lost_checked = now
        c = self.table.counters()
        lost, removed = c.get("EVENT_LOST", 0), c.get("REMOVED_LOST", 0)
        new, new_removed = lost - self._lost_seen[0], removed - self._lost_seen[1]
        self._lost_seen = (lost, removed)
        if new > 0:
            emit(Sev.WARNING, Msg.EVENTS_LOST, f"{new} data-path events lost in the last "
                 f"{LOST_REPORT_INTERVAL:.0f} s (event ring full), of which {new_removed} "
                 "removed-flow records: their teardown lines (302014/302016/302021) are "
                 f"missing; {lost} lost since the data path was loaded "
                 "(flowpin_datapath_events_lost_total, "
                 "flowpin_removed_flow_records_lost_total)")

    def on_datapath_event(self, ev: Any) -> None:
        """React to one event of the data path's ring (demand, table full, flow removed,
        WAN guard): on the loop."""
        if ev.type == "DEMAND":
            t = self.registry.by_id(ev.tunnel_id)
            if t is not None and t.state == "DOWN":
                self.initiations.wanted(t.key)
        elif ev.type == "MAP_FULL":
            self.stats["table_full"] += 1
            emit(Sev.WARNING, Msg.TABLE_FULL, f"flow table full "
                 f"({self.cfg.flow_table_size} entries): new flow {ev.key} refused")
        elif ev.type == "NONVPN_BUDGET":
            self.stats["nonvpn_budget"] += 1
            fam = ev.key.family
            emit(Sev.WARNING, Msg.NONVPN_BUDGET, f"non-VPN flows at their budget "
                 f"({self.table.nonvpn_limit(fam) if self.table else '?'} IPv{fam} flows, "
                 f"{self.cfg.nonvpn_flow_share}% of the table): new flow {ev.key} passes "
                 "untracked; the rest of the table stays free for VPN flows")
        elif ev.type == "FLOW_REMOVED":  # the loop hands these to the teardown thread
            self._teardowns.put([ev])
        elif ev.type in ("GUARD_OUT", "GUARD_IN"):
            self._report_guard(ev)

    def _report_guard(self, ev: Any) -> None:
        """One line per tunnel, direction and event interval (the data path samples); the
        counters are exact and in ``show vpn-context`` and the metrics."""
        assert self.table is not None
        t = self.registry.by_id(ev.tunnel_id)
        name = t.name if t else f"id {ev.tunnel_id}"
        out, inn = self.table.guard_counts().get(ev.tunnel_id, (0, 0))
        src, dst = ev.key.addr
        proto = protocols.label(ev.key.proto)
        if ev.type == "GUARD_OUT":
            self.stats["guard_out_events"] = self.stats.get("guard_out_events", 0) + 1
            emit(Sev.WARNING, Msg.CLEARTEXT_BLOCKED, f"Tunnel {name}: {proto} packet from "
                 f"{src} to {dst} would have left the WAN in clear: dropped by the WAN guard "
                 f"({out} packets so far)")
        else:
            self.stats["guard_in_events"] = self.stats.get("guard_in_events", 0) + 1
            emit(Sev.WARNING, Msg.CLEARTEXT_RECEIVED, f"IPSEC: Received a non-IPSec ({proto}) "
                 f"packet from {src} to {dst}: dropped, it matches Tunnel {name} "
                 f"({inn} packets so far)")

    # --- what the changing commands call (see commands.Control) ---------------------------
    def reload(self, path: str) -> Config:
        """Load ``path``; on success apply it, on error keep running as before."""
        # systemd holds the unit in "reloading" from RELOADING=1 to READY=1: READY follows
        # whatever happens.
        self.service.reloading()
        status = "configuration reload failed (see the log)"
        try:
            new = self._reload(path)
            status = f"configuration {path} loaded"
            return new
        except ConfigError as exc:
            status = f"configuration rejected, running configuration unchanged: {exc}"
            raise
        finally:
            self.service.reloaded(status)

    def _reload(self, path: str) -> Config:
        try:
            new = config_mod.load(path)
        except ConfigError as exc:
            self.stats["reload_errors"] += 1
            emit(Sev.ERROR, Msg.CONFIG_REJECTED, f"configuration rejected, running "
                 f"configuration unchanged: {exc}")
            raise
        fixed = ("instance", "vici_socket", "control_socket", "lan_interfaces",
                 "flow_table_size", "metrics_listen", "attach", "btf")
        changed = [f for f in fixed if getattr(new, f) != getattr(self.cfg, f)]
        if changed:
            emit(Sev.WARNING, Msg.CONFIG_LOADED, f"{', '.join(changed)} changed: takes "
                 "effect at the next restart")
            new = replace(new, **{f: getattr(self.cfg, f) for f in changed})
        self.cfg = new
        assert self.sweeper is not None
        self.sweeper.timeouts = new.timeouts
        self.stats["reloads"] += 1
        self.apply_sysopt()
        emit(Sev.INFO, Msg.CONFIG_LOADED, f"configuration {path} loaded")
        return new

    def apply_sysopt(self) -> None:
        """preserve-vpn-flows takes effect at once, on tunnels already up as well."""
        assert self.maps is not None
        self.maps.set_reclassify(self.reclassify())
        for t in self.registry.tunnels.values():
            self.maps.set_tunnel(t.tunnel_id, preserve=self.preserve_for(t.key))
            self._set_kick(t.tunnel_id, t.key)
        self._sweep()

    def _set_kick(self, tunnel_id: int, key: TunnelKey) -> None:
        """The resume kick of a tunnel, from the config (only on the real maps: it is a
        data path feature, the unit tests' in-memory maps have no use for it)."""
        if self.table is not None:
            self.table.set_kick(tunnel_id, self.cfg.kick_for(*key))

    def metrics_snapshot(self) -> dict[str, Any]:
        return self.request("metrics")


@dataclass(frozen=True)
class _Call:
    """A function another thread asked the loop to run, and where its answer goes."""

    fn: Callable[[], Any]
    box: queue.Queue[Any]


class _Apply:
    """The follower's output: applied at once in the follower's thread, under the lock.
    Handing SA events to the loop through a queue costs a thread wake-up, which on a busy
    2-core gateway was the larger part of the event-to-map time (up to ~20 ms)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def put(self, item: Any) -> None:
        try:
            self.daemon.handle(item)
        except Exception:  # noqa: BLE001 -- one bad event must not stop following charon
            log.exception("%s", line(Sev.ERROR, Msg.DAEMON, "internal error applying an SA "
                                     "event (the daemon goes on; please report)"))


def _settle_gc() -> None:
    """After a resync, on the reporter thread: collect once, then move every object alive
    (modules, bcc's tables, the registry of every tunnel: what lives as long as the daemon)
    out of the collector's generations for good (gc.freeze). A full collection otherwise
    walks them all again each time young objects pile up -- at 1,000 tunnels and a big
    teardown being logged, pauses of tens of ms in which no thread runs, an SA event's
    neither. Frozen objects are still freed when no longer referenced; only a reference
    cycle among them would stay (none is expected of long-lived state, and this runs once
    per connection to charon).

    And young objects are collected every 10,000 allocations instead of 700: a teardown
    being logged keeps a batch of records alive (sweeper.REMOVED_BATCH) that 700 promoted
    into the older generations, whose growth then set off full passes anyway; at 10,000
    they are gone before the first pass looks (at 1M flows, full passes during a
    100,000-flow teardown: 12 of 2-58 ms -> none; the young passes stay under ~3 ms)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _selector_order(s: Selector) -> tuple[int, str, str]:
    """The order the selectors are compiled in: by tunnel id, then as ``str(s)`` of the
    dataclass (its repr: local, then remote), with the networks' reprs cached (a resync
    of 1,000 tunnels sorted 2,000 selectors by their text: a tenth of its time)."""
    return (s.tunnel_id, net_repr(s.local), net_repr(s.remote))


def _ts(nets: Any) -> str:
    return ",".join(map(net_text, nets)) or "-"


def setup_logging(cfg: Config) -> None:
    # Under systemd: the journal, each line at its syslog priority (controlplane.journal).
    handler = None if cfg.log_file else journal_handler()
    if handler is None:
        handler = (logging.FileHandler(cfg.log_file) if cfg.log_file
                   else logging.StreamHandler(sys.stdout))
        fmt = "%(asctime)s %(message)s" if cfg.log_file else "%(message)s"
        handler.setFormatter(logging.Formatter(fmt, "%b %d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())


def main(config_path: str, purge: bool = False) -> int:
    try:
        cfg = config_mod.load(config_path)
    except ConfigError as exc:
        print(error_line(f"flowpin: error: {exc}"), file=sys.stderr)
        return 2
    setup_logging(cfg)
    if os.geteuid() != 0:
        print(error_line("flowpin: error: the daemon loads eBPF programs: run it as root"),
              file=sys.stderr)
        return 1
    # The loop must get the GIL back quickly from the sweeper and reclassify threads: an SA
    # event waits at most this long behind their Python code (default 5 ms).
    sys.setswitchinterval(0.0005)
    try:
        service = ServiceNotifier()
    except NotifyError as exc:
        print(error_line(f"flowpin: error: {exc}"), file=sys.stderr)
        return 1
    daemon = Daemon(cfg)
    daemon.service = service
    try:
        daemon.start()
    except ConfigError as exc:
        print(error_line(f"flowpin: error: {exc}"), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 -- a clear line for the admin, then exit
        emit(Sev.ERROR, Msg.DAEMON, f"cannot start: {exc}")
        daemon.stop()
        return 1

    def on_term(_sig: int, _frm: object) -> None:
        daemon.request_stop()

    signal.signal(signal.SIGHUP, daemon.on_sighup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    status = announce_ready(daemon)
    try:
        daemon.run()
    finally:
        status.stop()
        daemon.stop(purge=purge)
    return 0
