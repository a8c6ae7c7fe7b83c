"""``flowpin bench forward``: what a gateway's packet costs with no filter, with a typical
stateful nftables ruleset, and with flowpin's data path, measured side by side.

Topology (:mod:`bench.topo`): client -- gw -- server namespaces over veth,
cleartext (no IPsec: crypto would drown the difference). The gateway forwards; the three
*contenders* differ only in what filters the gateway:

- ``plain``: nothing (no netfilter hook, no conntrack in the gateway namespace);
- ``nftables``: an ``inet`` table, forward hook, policy drop: ``ct state
  established,related accept``, ``ct state invalid drop``, new TCP SYN accept, new UDP
  accept, ICMP accept; netfilter conntrack does the tracking;
- ``flowpin``: its data path (both TC directions) on the gateway's client-facing veth, the
  client/server subnets a selector of tunnel 1, tunnel 1 UP;
- ``tc_empty`` (diagnostic, ``--with-tc-empty``): the same TC hooks running an empty
  program, so flowpin's cost splits into the hook's and its own;
- ``tc_floor`` (diagnostic, ``--with-tc-floor``): the same TC hooks running
  ``bench/bpf/floor.c``, the least any TC flow table does (parse, one lookup of the 5-tuple in
  a preallocated hash, one atomic add): the floor of flowpin's design on this machine.

The TC contenders (flowpin, tc_empty, tc_floor) are attached the same way, tcx links or
clsact filters (``--attach``, default: what the data path's probe picks here). ``--attach
tcx,clsact`` runs both side by side in the same rounds, against the same plain baseline:
the first mode keeps the plain names (``flowpin``), the others get theirs as a suffix
(``flowpin_clsact``, ``tc_empty_clsact``), and ``targets_by_attach`` checks the targets per
mode.

Three measures, each alternating the contenders (A B C A B C ...) for ``--rounds`` rounds
of ``--seconds`` each; every contender starts each round with an empty flow table
(conntrack flushed / flowpin flows cleared):

- ``tput_gbps``: one iperf3 TCP stream (veth with TSO/GSO: 64 KiB segments cross the
  gateway, so this is bytes moved, not a per-packet rate);
- ``pps``: 64-byte frames (UDP payload 18) from one ``sendmmsg`` sender, counted as they
  arrive on the server's interface (forwarded by the gateway);
- ``cps``: short TCP connections (connect, RST) from one client process to an accept loop.

Then, with ``pps``, one flood per contender alternating it with plain every half second
(:func:`sliced_pps`): the pairing that decides the packets/s target; with ``cps``, the same
for each TC contender on tcx links within one client's run of short connections
(:func:`sliced_cps`).

Load generators run on the first CPU, servers on the second (fixed affinity: without it
runs vary by 2x depending on where the scheduler puts three processes on two cores).

Prints ONE JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import attach as attach_opt
from bench import topo as tp
from bench.common import (
    alternate,
    alternate_slices,
    bracketed,
    machine,
    median_ci95,
    print_result,
    ratio,
    summary,
)
from lab import netns, nft

CONTENDERS = ("plain", "nftables", "flowpin")
SERVER_LIFE_S = 24 * 3600  # the UDP sink and the connection server: longer than any run
TC_EMPTY = "tc_empty"  # diagnostic: the TC hook with an empty program (--with-tc-empty)
TC_FLOOR = "tc_floor"  # diagnostic: the least a TC flow table does (--with-tc-floor)
# diagnostic contender -> (bpf/ source, function)
BENCH_PROGS = {TC_EMPTY: ("empty.c", "fp_empty"), TC_FLOOR: ("floor.c", "fp_floor")}
MEASURES = ("tput_gbps", "pps", "cps")
TUNNEL = 1
NFT_TABLE = "fpbench"
IPERF_PORT, UDP_PORT, CPS_PORT = 5201, 9, 5300
CPS_CLIENTS = 1
TC_BASES = ("flowpin",) + tuple(BENCH_PROGS)  # the contenders that sit on a TC hook
# flowpin's targets against plain forwarding (paired ratios) and nftables, per attach mode
TARGETS = {"tput": 0.99, "pps": 0.97, "cps": 0.98}

tc_name = attach_opt.name
LOADGEN = [sys.executable, "-m", "bench.loadgen"]


class BenchError(RuntimeError):
    pass


def nft_ruleset() -> list[str]:
    """A typical stateful forward ruleset (what an admin already runs)."""
    t = f"inet {NFT_TABLE}"
    return [
        f"add table {t}",
        f"add chain {t} forward {{ type filter hook forward priority filter; policy drop; }}",
        f"add rule {t} forward ct state established,related accept",
        f"add rule {t} forward ct state invalid drop",
        f"add rule {t} forward tcp flags & (fin|syn|rst|ack) == syn ct state new accept",
        f"add rule {t} forward meta l4proto udp ct state new accept",
        f"add rule {t} forward meta l4proto icmp accept",
    ]


def _conntrack_flush() -> int:
    """Runs inside the gateway namespace: forget every conntrack entry; returns how many
    there were."""
    from pyroute2 import Conntrack

    with Conntrack() as ct:
        n = int(ct.count())
        ct.flush()
    return n


def _conntrack_count() -> int:
    from pyroute2 import Conntrack

    with Conntrack() as ct:
        return int(ct.count())


class Gateway:
    """Applies and removes the contenders on the benchmark gateway."""

    def __init__(self, modes: tuple[str, ...] = ("clsact",)) -> None:
        self.modes = modes  # resolved attach modes ("tcx", "clsact"), the primary first
        self.dps: dict[str, Any] = {}  # attach mode -> flowpin's data path
        self.progs: dict[str, tuple[Any, int]] = {}  # diagnostic contender -> (bcc, fd)
        self.links: list[int] = []  # the diagnostic programs' tcx links while applied
        # contender -> (what it is, how it is attached)
        self.kinds: dict[str, tuple[str, str]] = {
            tc_name(b, m, modes[0]): (b, m) for m in modes for b in TC_BASES}
        self.checks: dict[str, Any] = {"nftables_conntrack_entries": 0,
                                       "flowpin_verdicts": {}, "tc_floor_flows": 0,
                                       "flowpin_removed_records_logged": 0,
                                       "flowpin_removed_record_cpu_us": None}
        self._drain: threading.Thread | None = None
        self._drain_stop = threading.Event()

    @property
    def dp(self) -> Any:
        """flowpin's data path of the primary attach mode."""
        return self.dps.get(self.modes[0])

    def load_flowpin(self) -> None:
        from controlplane.datapath import Datapath, DatapathConfig

        for mode in self.modes:  # one per mode: each is its own contender, own flows
            dp = Datapath(DatapathConfig(instance=f"bench-fwd-{mode}", pin=False,
                                         flows4_max=1 << 20, flows6_max=1024,
                                         tunnels_max=64, pickup_s=0, attach=mode)).load()
            dp.table.add_selector(TUNNEL, tp.CLIENT_NET, tp.SERVER_NET)
            dp.table.set_tunnel(TUNNEL, up=True, preserve=True)
            self.dps[mode] = dp
        # The daemon's side of the event ring, as on a gateway: every removed-flow record
        # read and turned into its teardown line (to a null log). Without a reader the
        # ring fills and every record after it is lost (EVENT_LOST in the thousands).
        # It runs on the server's CPU, off the load CPU (see _drain_events).
        self._drain = threading.Thread(target=self._drain_events, name="ring", daemon=True)
        self._drain.start()

    def _drain_events(self) -> None:
        from controlplane.messages import teardown_line
        from controlplane.sweeper import removed_from_events

        # Pinned like the servers and the switcher: a reader left to the scheduler ran on
        # the load CPU in some runs and not in others, and at ~10,000 records/s in the
        # connections/s runs (a reused port replaces a closed flow: one record per new
        # connection) its ~20 us a record (then: ring_events decoded by ctypes fields)
        # moved sliced cps between 0.92 and 0.98 from one run to the next. Its cost is not
        # hidden: the CPU time it spent per record is reported beside.
        _, server_cpu = tp.cpus()
        if server_cpu is not None:
            os.sched_setaffinity(0, {server_cpu})  # 0: this thread only
        null = logging.getLogger("fpbench.teardowns")
        null.propagate = False
        null.addHandler(logging.NullHandler())
        busy_s = 0.0
        while not self._drain_stop.is_set():
            for dp in list(self.dps.values()):
                t0 = time.thread_time()  # CPU time: the poll's wait does not count
                removed = removed_from_events(dp.table.read_events(100))
                for r in removed:
                    null.info(teardown_line(r))
                if removed:
                    busy_s += time.thread_time() - t0
                    n = self.checks["flowpin_removed_records_logged"] + len(removed)
                    self.checks["flowpin_removed_records_logged"] = n
                    self.checks["flowpin_removed_record_cpu_us"] = round(busy_s / n * 1e6, 1)

    def load_bench_prog(self, contender: str) -> None:
        from bench.progs import compile_bench_prog

        self.progs[contender] = compile_bench_prog(*BENCH_PROGS[contender])

    def prog_fd(self, contender: str) -> int:
        base, mode = self.kinds[contender]
        return self.dps[mode].prog_fd() if base == "flowpin" else self.progs[base][1]

    @staticmethod
    def _del_clsact() -> None:
        """No qdisc left behind: ``plain`` must not pay for an empty clsact."""
        from pyroute2 import IPRoute

        with IPRoute(netns=tp.GW) as ipr, contextlib.suppress(Exception):  # tcx: none
            ipr.tc("del", "clsact", ipr.link_lookup(ifname=tp.GW_LAN_IF)[0])

    def _bench_filters(self, base: str, mode: str) -> None:
        from controlplane import libbpf, tcx

        fd = self.progs[base][1]
        if mode == "tcx":  # the same hooks as flowpin's tcx links, unpinned
            def attach() -> list[int]:
                index = tcx.ifindex(tp.GW_LAN_IF)
                return [libbpf.link_create(fd, index, t) for t in tcx.HOOKS.values()]

            self.links = tcx.in_netns(tp.GW, attach)
            return
        from pyroute2 import IPRoute

        from controlplane.datapath import PARENT_EGRESS, PARENT_INGRESS

        with IPRoute(netns=tp.GW) as ipr:
            idx = ipr.link_lookup(ifname=tp.GW_LAN_IF)[0]
            ipr.tc("add", "clsact", idx)
            for parent in (PARENT_INGRESS, PARENT_EGRESS):
                ipr.tc("add-filter", "bpf", idx, handle=1, fd=fd,
                       name=BENCH_PROGS[base][1],
                       parent=parent, prio=1, classid=1, direct_action=True)

    def _del_links(self) -> None:
        from controlplane import libbpf

        for fd in self.links:
            libbpf.link_detach(fd)
            os.close(fd)
        self.links = []

    def apply(self, contender: str) -> None:
        netns.call(tp.GW, _conntrack_flush)
        base, mode = self.kinds.get(contender, (contender, ""))
        if contender == "nftables":
            err = nft.apply_in(tp.GW, nft_ruleset())
            if err:
                raise BenchError(f"nftables: {err}")
        elif base == "flowpin":
            dp = self.dps[mode]
            dp.table.clear_flows()
            dp.table.reset_counters()
            dp.attach(tp.GW_LAN_IF, netns=tp.GW)
        elif base in BENCH_PROGS:
            if base == TC_FLOOR:
                # batch lookup-and-delete: bcc's clear() restarts its key walk after every
                # delete (quadratic: 18 s for what a packets/s run leaves in the floor)
                for _ in self.progs[base][0]["floor_flows"].items_lookup_and_delete_batch():
                    pass
            self._bench_filters(base, mode)

    def hooks(self, contender: str, on: bool) -> None:
        """A TC contender's hooks attached or detached, its flows and counters left as
        they are: a switch in a sliced run must not cost a table's worth of deletes (see
        sliced_cps)."""
        base, mode = self.kinds[contender]
        if on and base == "flowpin":
            self.dps[mode].attach(tp.GW_LAN_IF, netns=tp.GW)
        elif on:
            self._bench_filters(base, mode)
        else:
            if base == "flowpin":
                self.dps[mode].detach()
            else:
                self._del_links()
            self._del_clsact()

    def remove(self, contender: str) -> None:
        base, mode = self.kinds.get(contender, (contender, ""))
        if contender == "nftables":
            n = netns.call(tp.GW, _conntrack_count)
            self.checks["nftables_conntrack_entries"] = max(
                n, self.checks["nftables_conntrack_entries"])
            nft.apply_in(tp.GW, [f"delete table inet {NFT_TABLE}"])
        elif base in BENCH_PROGS:
            self._del_links()
            self._del_clsact()
            if base == TC_FLOOR:  # the floor really tracked the flows it saw
                n = sum(1 for _ in self.progs[base][0]["floor_flows"].items_lookup_batch())
                self.checks["tc_floor_flows"] = max(n, self.checks["tc_floor_flows"])
        elif base == "flowpin":
            dp = self.dps[mode]
            dp.detach()
            self._del_clsact()
            c = dp.table.counters()
            v = self.checks["flowpin_verdicts"]
            for k, n in c.items():
                if n:
                    v[k] = v.get(k, 0) + n

    def close(self) -> None:
        self._drain_stop.set()
        if self._drain is not None:
            self._drain.join(5)
            self._drain = None
        self._del_links()
        for dp in self.dps.values():
            dp.detach()
            dp.close()
        self.dps = {}
        for b, _fd in self.progs.values():
            b.cleanup()
        self.progs = {}


def prog_run_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) the kernel accounts for the program behind ``fd`` while run
    statistics are on (``kernel.bpf_stats_enabled``; shown in the fd's fdinfo)."""
    from controlplane.libbpf import fdinfo

    info = fdinfo(fd)
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def added_ns(pps: float | None, plain_pps: float | None) -> float | None:
    """What a contender adds to one packet's cost on the whole path, from the rates: the
    path runs on one CPU, so 1 s / pps is the CPU time of one packet."""
    if not pps or not plain_pps:
        return None
    return round(1e9 / pps - 1e9 / plain_pps, 1)


def _wait_ready(p: subprocess.Popen[str], what: str) -> None:
    assert p.stdout is not None
    line = p.stdout.readline()
    if "listening" not in line:
        raise BenchError(f"{what} did not start: {line!r}")


class Runner:
    def __init__(self, t: tp.Topology, seconds: int) -> None:
        self.t, self.seconds = t, seconds
        self.load_cpu, self.server_cpu = tp.cpus()
        self.unsettled: list[str] = []  # connections still open when a contender began

    def settle(self) -> None:
        """Before a contender: the last measurement's connections are all closed."""
        left = settle(self.t)
        if left:
            self.unsettled += left

    def start_servers(self) -> None:
        sc = self.server_cpu
        self.iperf = self.t.popen(tp.SERVER, ["iperf3", "-s", "-p", str(IPERF_PORT)], cpu=sc,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The servers live as long as the run (the topology kills them at the end): their
        # own default of 600 s ended the connection server in the middle of a run of two
        # attach modes, and every connection after it was refused.
        life = ["--seconds", str(SERVER_LIFE_S)]
        self.sink = self.t.popen(tp.SERVER, LOADGEN + ["udp-sink", "--port", str(UDP_PORT)]
                                 + life,
                                 cpu=sc, stdout=subprocess.PIPE, text=True)
        _wait_ready(self.sink, "UDP sink")
        self.cps = self.t.popen(tp.SERVER, LOADGEN + ["cps-server", "--port", str(CPS_PORT)]
                                + life,
                                cpu=sc, stdout=subprocess.PIPE, text=True)
        _wait_ready(self.cps, "connection server")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # iperf3 prints nothing useful when ready
            if _port_open(tp.SERVER, IPERF_PORT):
                return
            time.sleep(0.05)
        raise BenchError("iperf3 server did not start")

    def _client(self, argv: list[str]) -> dict[str, Any]:
        p = self.t.popen(tp.CLIENT, argv, cpu=self.load_cpu, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=self.seconds + 30)
        self.t.procs.remove(p)
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise BenchError(f"{argv[0]} failed: {(err or out).strip()[-300:]}") from None

    def tput(self) -> float:
        j = self._client(["iperf3", "-c", tp.SERVER_IP, "-p", str(IPERF_PORT), "-J",
                          "-t", str(self.seconds)])
        if "error" in j:
            raise BenchError(f"iperf3: {j['error']}")
        return j["end"]["sum_received"]["bits_per_second"] / 1e9

    def pps(self) -> float:
        before = self.t.link_stats(tp.SERVER, "s0")["rx_packets"]
        j = self._client(LOADGEN + ["udp-flood", "--to", tp.SERVER_IP, "--port",
                                    str(UDP_PORT), "--seconds", str(self.seconds)])
        after = self.t.link_stats(tp.SERVER, "s0")["rx_packets"]
        return (after - before) / j["seconds"]

    def cps_run(self) -> float:
        procs = [self.t.popen(tp.CLIENT, LOADGEN + ["cps-client", "--to", tp.SERVER_IP,
                                                    "--port", str(CPS_PORT), "--seconds",
                                                    str(self.seconds)],
                              cpu=self.load_cpu, stdout=subprocess.PIPE, text=True)
                 for _ in range(CPS_CLIENTS)]
        total = 0.0
        for p in procs:
            out, _ = p.communicate(timeout=self.seconds + 30)
            self.t.procs.remove(p)
            j = json.loads(out)
            if j["failed"]:
                raise BenchError(f"{j['failed']} short connections failed "
                                 f"({j.get('errors')})")
            total += j["connections"] / j["seconds"]
        return total


# TCP states (as /proc/net/tcp numbers them) in which a socket may still send: everything
# but LISTEN, TIME_WAIT (it only answers a retransmitted FIN, i.e. a peer in one of these
# states) and CLOSE.
_SENDING_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
                   "05": "FIN_WAIT2", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING"}


def _sending_sockets() -> list[str]:
    """Runs inside a namespace: its TCP sockets that may still send, as 'state port'."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.read().splitlines()[1:]:
                f = line.split()
                if f[3] in _SENDING_STATES:
                    out.append(f"{_SENDING_STATES[f[3]]} {int(f[1].rsplit(':', 1)[1], 16)}")
    return out


def settle(t: tp.Topology, timeout: float = 15.0) -> list[str]:
    """Wait until no TCP connection of the last measurement can still send; return what
    is left (empty: settled).

    Every contender starts from nothing (conntrack flushed, flowpin's flows cleared, no
    pickup window), so it must never see a packet of a connection opened before it: for
    flowpin that packet is a TCP segment without SYN and without a flow, a DROP_NO_CONN
    (nftables drops it too, silently, by its policy). Such packets come from a
    measurement's tail: iperf3 or a short connection still closing when its process has
    exited (a late FIN and the ACK that answers it), and retransmissions of what the
    previous contender dropped. Seen once in 765k packets on a fresh, busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        left = [f"{ns}: {s}" for ns in (tp.CLIENT, tp.SERVER)
                for s in netns.call(ns, _sending_sockets)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _port_open(ns: str, port: int) -> bool:
    def probe(p: int) -> bool:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as fh:
                for line in fh.read().splitlines()[1:]:
                    f = line.split()
                    if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == p:
                        return True
        return False

    return bool(netns.call(ns, probe, port))


def prog_costs(gw: Gateway, r: Runner, tc_contenders: tuple[str, ...]) -> dict[str, Any]:
    """One more 64-byte run per TC contender with run statistics on (BPF_ENABLE_STATS):
    the kernel's own account of the time spent in the program per packet. The accounting
    itself costs (two clock reads per run), and it is the same in every program, so
    flowpin's own work is flowpin's figure minus the empty program's. Not part of the
    rounds (it slows them)."""
    from controlplane.libbpf import enable_run_stats

    fds = {c: gw.prog_fd(c) for c in tc_contenders}
    out: dict[str, Any] = {}
    stats_fd = enable_run_stats()
    try:
        for c, fd in fds.items():
            r.settle()
            gw.apply(c)
            try:
                t0, n0 = prog_run_stats(fd)
                r.pps()
                t1, n1 = prog_run_stats(fd)
            finally:
                gw.remove(c)
            out[c] = round((t1 - t0) / (n1 - n0), 1) if n1 > n0 else None
    finally:
        os.close(stats_fd)
    for mode in gw.modes:
        fp, empty = (out.get(tc_name(b, mode, gw.modes[0])) for b in ("flowpin", TC_EMPTY))
        if fp is not None and empty is not None:
            out[tc_name("flowpin_own", mode, gw.modes[0])] = round(fp - empty, 1)
    return out


SLICE_S = 0.5  # the sliced measure's alternation: plain and one contender, within one flood
SLICED_SECONDS = 30  # one flood per contender


def _alternate_on_server_cpu(r: Runner, what: str, load: list[str],
                             read: Callable[[], int], switch: Callable[[bool], None],
                             seconds: float, slice_s: float,
                             start_on: bool) -> list[tuple[bool, float]]:
    """One load (``load``: a loadgen command, on the load CPU) running through ``seconds``
    of slices of plain and a contender (:func:`alternate_slices`); this process on the
    server's CPU, off the load CPU, while it switches and reads."""
    cpu_before = os.sched_getaffinity(0)
    if r.server_cpu is not None:
        os.sched_setaffinity(0, {r.server_cpu})
    proc = None

    def alive() -> None:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: the load ended early")

    try:
        r.settle()
        # longer than the slices and the switches between them; stopped after
        proc = r.t.popen(tp.CLIENT, LOADGEN + load + ["--seconds", str(2 * seconds + 10)],
                         cpu=r.load_cpu, stdout=subprocess.DEVNULL)
        time.sleep(0.5)  # the load started (Python, ctypes) and is running
        return alternate_slices(seconds, slice_s, start_on, read, switch, alive)
    finally:
        if proc is not None:
            r.t.stop(proc)
            with contextlib.suppress(ValueError):
                r.t.procs.remove(proc)
        os.sched_setaffinity(0, cpu_before)


def _sliced_figures(what: str, slices: list[tuple[bool, float]], unit: str,
                    seconds: float, slice_s: float) -> dict[str, Any]:
    ratios = bracketed(slices)
    if not ratios:
        raise BenchError(f"{what}: no slice between two plain ones")
    med, lo, hi = median_ci95(ratios)
    return {"vs_plain": round(med, 3), "ci95": [round(lo, 3), round(hi, 3)],
            "pairs": len(ratios), "slice_s": slice_s, "seconds": seconds,
            f"plain_{unit}_median": round(statistics.median(p for o, p in slices if not o)),
            f"{unit}_median": round(statistics.median(p for o, p in slices if o))}


def sliced_pps(gw: Gateway, r: Runner, contender: str, seconds: float = SLICED_SECONDS,
               slice_s: float = SLICE_S, start_on: bool = False) -> dict[str, Any]:
    """64-byte packets/s of ``contender`` against plain, alternating every ``slice_s``
    within ONE flood of ``seconds``: the gateway switches between plain and the contender
    (applied, removed) between slices, and the server's interface is read at each switch;
    the switch itself falls between two reads, in no slice. A round-based ratio pairs runs
    tens of seconds apart, and on a shared VM plain alone wanders by ±10 % from one 3 s run
    to the next (results.json's runs); half a second apart, the pair sees the same
    machine. The switching runs on the server's CPU, off the load CPU."""
    from pyroute2 import IPRoute

    with IPRoute(netns=tp.SERVER) as ipr:
        idx = ipr.link_lookup(ifname="s0")[0]

        def rx() -> int:
            return int(ipr.get_links(idx)[0].get("IFLA_STATS64")["rx_packets"])

        slices = _alternate_on_server_cpu(
            r, f"{contender}, sliced pps",
            ["udp-flood", "--to", tp.SERVER_IP, "--port", str(UDP_PORT)], rx,
            lambda on: gw.apply(contender) if on else gw.remove(contender),
            seconds, slice_s, start_on)
    return _sliced_figures(f"{contender}, sliced pps", slices, "pps", seconds, slice_s)


def sliced_cps(gw: Gateway, r: Runner, contender: str, seconds: float = SLICED_SECONDS,
               slice_s: float = SLICE_S, start_on: bool = False) -> dict[str, Any]:
    """Short TCP connections/s of ``contender`` against plain, as :func:`sliced_pps` does
    for packets: one client connecting through ``seconds`` of alternating slices, the
    server namespace's accepted connections (PassiveOpens) read at each switch.

    The contender is applied once and only its hooks are switched: its flows stay (a
    table of 15,000 new flows a slice, emptied at each switch, took seconds). The one
    connection in flight at a switch to flowpin began under plain: its SYN-ACK finds no
    flow. flowpin is switched on as a gateway attaching it meets the connections already
    open, with a pick-up window (1 s from each attach): without it that SYN-ACK is
    refused and the client waits a second for the server's retransmission, a stall that
    a slice cannot tell from a cost."""
    base, mode = gw.kinds[contender]
    dp = gw.dps.get(mode) if base == "flowpin" else None

    def switch(on: bool) -> None:
        if on and dp is not None:
            dp.table.update_config(pickup_s=1,
                                   attach_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        gw.hooks(contender, on)

    gw.apply(contender)
    gw.hooks(contender, False)
    try:
        slices = _alternate_on_server_cpu(
            r, f"{contender}, sliced cps",
            ["cps-client", "--to", tp.SERVER_IP, "--port", str(CPS_PORT)],
            # connections the server namespace accepted (handshake completed)
            lambda: netns.snmp_counter(r.cps.pid, "Tcp", "PassiveOpens"), switch, seconds,
            slice_s, start_on)
    finally:
        if dp is not None:  # as the rounds have it: no pick-up
            dp.table.update_config(pickup_s=0, attach_ns=0)
        gw.hooks(contender, True)  # applied as it was, for remove()
        gw.remove(contender)
    return _sliced_figures(f"{contender}, sliced cps", slices, "cps", seconds, slice_s)


def targets_for(name: str, ratios: dict[str, Any], paired: dict[str, float]) -> dict[str, Any]:
    """flowpin's targets for the contender ``name`` (flowpin in one attach mode): at least
    TARGETS × plain and ahead of nftables (ratios of medians). Against plain a target is
    met when both the ratio of medians and the paired ratio (each round against its own
    plain run) meet it, the rule results.md applies to the primary mode too: one of the
    two alone is a run that cannot tell a met target from a miss."""
    def ok(v: Any, floor: float) -> bool | None:
        return None if v is None else bool(v >= floor)

    def both(p: Any, m: Any, floor: float) -> bool | None:
        if p is None or m is None:
            return ok(p if m is None else m, floor)
        return bool(p >= floor and m >= floor)

    def ahead(v: Any) -> bool | None:
        return None if v is None else bool(v > 1.0)

    long = {"tput": "tput_gbps", "pps": "pps", "cps": "cps"}
    met: dict[str, bool | None] = {}
    measured: dict[str, Any] = {}
    for short, floor in TARGETS.items():
        p = paired.get(f"{name}_vs_plain_{long[short]}")
        m = ratios.get(f"{name}_vs_plain_{short}")
        measured[f"{short}_vs_plain_paired"] = p
        measured[f"{short}_vs_plain"] = m
        met[f"{short}_vs_plain"] = both(p, m, floor)
        sl = paired.get(f"{name}_vs_plain_{long[short]}_sliced")
        if sl is not None:  # the finest pairing there is decides (see sliced_pps)
            measured[f"{short}_vs_plain_sliced"] = sl
            met[f"{short}_vs_plain"] = ok(sl, floor)
        n = ratios.get(f"{name}_vs_nft_{short}")
        measured[f"{short}_vs_nft"] = n
        met[f"{short}_ahead_of_nft"] = ahead(n)
    return {"min_vs_plain_paired": dict(TARGETS), "measured": measured, "met": met}


def run(rounds: int = 5, seconds: int = 3, measures: tuple[str, ...] = MEASURES,
        diagnostics: tuple[str, ...] = (), attach: tuple[str, ...] = ("auto",),
        sliced_seconds: float = SLICED_SECONDS) -> dict[str, Any]:
    """``diagnostics``: extra TC contenders from :data:`BENCH_PROGS` (tc_empty, tc_floor).
    ``attach``: the attach modes of the TC contenders (auto, tcx, clsact), side by side.
    ``sliced_seconds``: the flood of each contender's sliced packets/s (0: none)."""
    if os.geteuid() != 0:
        raise BenchError("the forwarding benchmark needs root (namespaces, eBPF, nftables)")
    try:
        modes = attach_opt.resolve(attach)
    except OSError as exc:
        raise BenchError(str(exc)) from exc
    gw = Gateway(modes)
    diagnostics = tuple(c for c in BENCH_PROGS if c in diagnostics)
    tc_contenders = tuple(tc_name(b, m, modes[0]) for m in modes
                          for b in ("flowpin",) + diagnostics)
    order = ("plain", "nftables") + tc_contenders
    results: dict[str, dict[str, Any]] = {c: {} for c in order}
    paired: dict[str, float] = {}
    prog_ns: dict[str, Any] = {}
    started = time.monotonic()
    try:
        with tp.Topology() as t:
            gw.load_flowpin()
            for c in diagnostics:
                gw.load_bench_prog(c)
            r = Runner(t, seconds)
            r.start_servers()
            fns = {"tput_gbps": r.tput, "pps": r.pps, "cps": r.cps_run}
            digits = {"tput_gbps": 3, "pps": 0, "cps": 1}
            for m in measures:
                def one(c: str, _round: int, fn: Any = fns[m], what: str = m) -> float:
                    r.settle()
                    gw.apply(c)
                    try:
                        return float(fn())
                    except BenchError as exc:
                        raise BenchError(f"{c}, {what}: {exc}") from None
                    finally:
                        gw.remove(c)

                per = alternate(order, rounds, one)
                for c in order:
                    results[c][m] = summary(per[c], digits[m])
                    if c != "plain":  # the same round's plain run as the reference
                        paired[f"{c}_vs_plain_{m}"] = round(statistics.median(
                            a / b for a, b in zip(per[c], per["plain"], strict=True) if b), 3)
            if "pps" in measures:
                prog_ns = prog_costs(gw, r, tc_contenders)
            # every other contender starts its alternation applied: neither state always
            # goes first. Packets/s: every contender. Connections/s: the TC ones on tcx
            # links (an nftables ruleset applied mid-way finds the connection in flight
            # invalid; switching a clsact qdisc's hooks stalled every connection, plain
            # slices too, at 0-1,000 a second against 13,000: not understood yet)
            cps_sliced = tuple(c for c in tc_contenders if gw.kinds[c][1] == "tcx")
            for m, fn, contenders in (("pps", sliced_pps, order[1:]),
                                      ("cps", sliced_cps, cps_sliced)):
                if m not in measures or sliced_seconds <= 0:
                    continue
                for i, c in enumerate(contenders):
                    got = fn(gw, r, c, sliced_seconds, start_on=bool(i % 2))
                    results[c][f"{m}_sliced"] = got
                    paired[f"{c}_vs_plain_{m}_sliced"] = got["vs_plain"]
            gw.checks["unsettled_connections"] = r.unsettled[:20]
    finally:
        gw.close()
    med = {c: {m: results[c].get(m, {}).get("median") for m in MEASURES} for c in CONTENDERS}
    ratios = {
        "flowpin_vs_plain_tput": ratio(med["flowpin"]["tput_gbps"], med["plain"]["tput_gbps"]),
        "flowpin_vs_nft_tput": ratio(med["flowpin"]["tput_gbps"],
                                     med["nftables"]["tput_gbps"]),
        "flowpin_vs_plain_pps": ratio(med["flowpin"]["pps"], med["plain"]["pps"]),
        "flowpin_vs_nft_pps": ratio(med["flowpin"]["pps"], med["nftables"]["pps"]),
        "flowpin_vs_plain_cps": ratio(med["flowpin"]["cps"], med["plain"]["cps"]),
        "flowpin_vs_nft_cps": ratio(med["flowpin"]["cps"], med["nftables"]["cps"]),
        "nft_vs_plain_tput": ratio(med["nftables"]["tput_gbps"], med["plain"]["tput_gbps"]),
        "nft_vs_plain_pps": ratio(med["nftables"]["pps"], med["plain"]["pps"]),
        "nft_vs_plain_cps": ratio(med["nftables"]["cps"], med["plain"]["cps"]),
    }
    for c in tc_contenders:
        if c == "flowpin":
            continue
        for m, short in (("tput_gbps", "tput"), ("pps", "pps"), ("cps", "cps")):
            ratios[f"{c}_vs_plain_{short}"] = ratio(
                results[c].get(m, {}).get("median"), med["plain"][m])
            if gw.kinds[c][0] == "flowpin":
                ratios[f"{c}_vs_nft_{short}"] = ratio(
                    results[c].get(m, {}).get("median"), med["nftables"][m])

    pps_plain = results["plain"].get("pps", {}).get("median")
    per_packet = {
        "added_ns": {c: added_ns(results[c].get("pps", {}).get("median"), pps_plain)
                     for c in order if c != "plain"},
        "plain_ns": round(1e9 / pps_plain, 1) if pps_plain else None,
        "prog_ns_bpf_stats": prog_ns,
    }

    by_attach = {m: targets_for(tc_name("flowpin", m, modes[0]), ratios, paired)
                 for m in modes}
    # The primary attach mode's targets, in the shape results.json has always had, judged
    # by the one rule of every table (targets_for: the sliced figure where measured, else
    # the ratio of medians and the paired ratio both)
    targets = {
        "flowpin_vs_plain_tput_min": TARGETS["tput"],
        "flowpin_vs_plain_pps_min": TARGETS["pps"],
        "flowpin_vs_plain_cps_min": TARGETS["cps"],
        "met": dict(by_attach[modes[0]]["met"]),
    }
    return {
        "forward": results,
        "ratios": ratios,
        "paired_ratios": paired,
        "per_packet": per_packet,
        "targets": targets,
        "targets_by_attach": by_attach,
        "checks": gw.checks,
        "config": {"rounds": rounds, "seconds": seconds, "order": list(order),
                   "sliced_seconds": sliced_seconds, "slice_s": SLICE_S,
                   "attach": list(modes), "attach_asked": list(attach),
                   "measures": list(measures), "cps_clients": CPS_CLIENTS,
                   "load_cpu": tp.cpus()[0], "server_cpu": tp.cpus()[1],
                   "udp_payload": 18, "frame_bytes": 64, "nft_ruleset": nft_ruleset()},
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "notes": [
            "units: tput_gbps = iperf3 TCP goodput received (Gbit/s), one stream; pps = "
            "64-byte frames arriving on the server's veth per second from one sendmmsg "
            "sender; cps = short TCP connections (SYN, SYN-ACK, ACK, RST) completed per "
            "second by one client process",
            "load generators (iperf3 client, UDP sender, connection client) run on CPU 0, "
            "servers on CPU 1; on veth the softirq work of sender, gateway and receiver "
            "runs on the sending CPU, so pps and cps measure the whole path's CPU cost per "
            "packet on one core, of which the gateway's filter is a part",
            "ratios are of medians; paired_ratios are medians over rounds of the ratio to "
            "the same round's plain run (robust to the machine drifting between rounds)",
            "each round starts with an empty table: conntrack flushed (gateway namespace), "
            "flowpin's flows cleared",
            "flowpin runs with its event ring read as the daemon reads it (every removed-flow "
            "record turned into its teardown line) by a thread on the server's CPU, as the "
            "servers are, off the load CPU: checks.flowpin_removed_records_logged, the CPU "
            "time it spent per record in checks.flowpin_removed_record_cpu_us (a cost the "
            "connections/s figures leave out: on a gateway the daemon takes it from "
            "whichever CPU runs it), and EVENT_LOST / REMOVED_LOST in "
            "checks.flowpin_verdicts if any were lost",
            "tc_empty (with --with-tc-empty): the same TC hooks on the same veth (tcx links "
            "or clsact filters, as flowpin's in that attach mode) with an empty "
            "SCHED_CLS program on ingress and egress: the price of the TC hook itself, "
            "which any TC eBPF filter pays before doing any work",
            "config.attach: the attach modes measured, the first with the plain names "
            "(flowpin, tc_empty, tc_floor), the others suffixed (flowpin_clsact ...), all "
            "in the same rounds against the same plain runs; targets_by_attach checks "
            "flowpin's targets per mode (paired ratios vs plain: tput >= 0.99, pps >= 0.97, "
            "cps >= 0.98; ratios of medians vs nftables > 1)",
            "tc_floor (with --with-tc-floor): the same hooks running bench/bpf/floor.c, the least "
            "any TC flow table does per packet (parse Ethernet/IPv4/ports, one lookup of the "
            "5-tuple in a preallocated 1M-entry hash with flowpin's key and value types, "
            "create on a miss, one atomic add; no tunnel, TCP state or counters): the floor "
            "of flowpin's design on this machine",
            "per_packet.plain_ns = 1 s / plain's median pps: the CPU time of one 64-byte "
            "packet on the whole path; added_ns = what each contender adds to it (from the "
            "medians); prog_ns_bpf_stats = the kernel's account (BPF run statistics, "
            "one extra run each, not in the rounds) of time inside the TC program per run, "
            "which includes the accounting's own clock reads; flowpin_own = flowpin minus "
            "the empty program, i.e. flowpin's work without the hook and the accounting",
            "pps_sliced (each contender but plain, after the rounds): one flood of "
            "config.sliced_seconds, the gateway switched between plain and the contender "
            "every 0.5 s, the server's interface read at each switch; vs_plain = median "
            "over the contender's slices of its rate / the mean of the two plain slices "
            "around it, ci95 = a bootstrap 95 % interval of that median. Where it is "
            "measured it decides the packets/s target (paired_ratios *_pps_sliced)",
            "cps_sliced (each TC contender on tcx links, after pps_sliced): the same within one "
            "client's run of short connections, the server namespace's PassiveOpens read "
            "at each switch; the contender applied once and its hooks switched (flows "
            "stay), flowpin with a 1 s pick-up window from each attach so that the one "
            "connection in flight at a switch is not refused. It decides the "
            "connections/s target (paired_ratios *_cps_sliced)",
        ],
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="flowpin bench forward",
                                 description="plain vs nftables vs flowpin forwarding "
                                 "(prints one JSON object)")
    ap.add_argument("--json", action="store_true", help="accepted; output is always JSON")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of A B C (default 5)")
    ap.add_argument("--seconds", type=int, default=3, help="seconds per run (default 3)")
    ap.add_argument("--with-tc-empty", action="store_true",
                    help="a diagnostic contender: the same TC hooks with an empty eBPF "
                    "program (what attaching at TC costs before flowpin's own work)")
    ap.add_argument("--with-tc-floor", action="store_true",
                    help="a diagnostic contender: the same TC hooks with the least a TC "
                    "flow table does (bench/bpf/floor.c: parse, one hash lookup, one atomic add)")
    ap.add_argument("--measure", action="append", choices=MEASURES,
                    help="only this measure (repeatable; default all)")
    ap.add_argument("--sliced-seconds", type=float, default=SLICED_SECONDS,
                    help="packets/s against plain alternating every 0.5 s within one flood "
                    f"of this many seconds per contender (default {SLICED_SECONDS}; 0: not)")
    attach_opt.add_option(ap)
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.seconds < 1:
        ap.error("--rounds and --seconds must be >= 1")
    if a.sliced_seconds < 0 or 0 < a.sliced_seconds < 4 * SLICE_S:
        ap.error(f"--sliced-seconds must be 0 or at least {4 * SLICE_S:g}")

    diagnostics = ((TC_EMPTY,) if a.with_tc_empty else ()) + (
        (TC_FLOOR,) if a.with_tc_floor else ())
    return print_result(lambda: run(a.rounds, a.seconds, tuple(a.measure or MEASURES),
                                    diagnostics, a.attach, a.sliced_seconds))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
