"""The resume kick in the lab: real charons, real flowpin daemons on both gateways, real TCP.

A paced transfer bo-client -> ho-server is in flight when the CHILD_SA is terminated for
20 s (demand initiation off, so the outage lasts exactly that). With the kick on, the
gateways answer the held retransmissions with ICMP unreachables, the sender's timer stays
short and the first byte arrives well within the stock backoff after the tunnel is back;
with the kick off (the same lab, reloaded) no kick is sent and the sender waits out its
backed-off timer as before. A capture of what both gateways send on the WAN sees nothing in
clear, the kicks included (they leave by the LAN). The bounds are generous (the benchmark
measures the speed): stock TCP takes about 6.5 s here after 20 s, the kick well under 1 s.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from bench.resume import measure, set_kick
from controlplane.show import vpn_context
from lab.capture import WanCapture
from lab.lab import Lab
from lab.netns import snmp_counter
from tests.conftest import require_lab_prerequisites, unique_lab_name

pytestmark = pytest.mark.lab

OUTAGE_S = 20.0
LONG_OUTAGE_S = 60.0
TARGET_MS = 1000  # the product's promise: moving again within 1 s of the tunnel being back
# Bytes/s of each of the 100 paced transfers of the 60 s test: 20 kB/s here; an emulated VM
# (tests/xfrm/guest.sh under TCG) forwards far less and sets a lower one.
RESUME_RATE = int(os.environ.get("FLOWPIN_RESUME_RATE", "20000"))
# Transfers in each direction: 50 here; an emulated VM starts Python processes in seconds
# each and sets fewer.
RESUME_FLOWS = int(os.environ.get("FLOWPIN_RESUME_FLOWS", "50"))
# Seconds of its pace a sender of the 60 s test makes up after the outage (see the test).
CATCH_UP_S = 1.0
KICKED_BOUND_MS = 2500  # well under stock TCP's ~6500 ms after a 20 s outage
STOCK_AT_LEAST_MS = 3000


@pytest.fixture(scope="module")
def rlab() -> Iterator[Lab]:
    require_lab_prerequisites()
    lab = Lab(unique_lab_name("resume"))
    lab.up(preserve=True, daemon_options={"initiate": False})
    try:
        yield lab
    finally:
        lab.down()


def _kicked(lab: Lab) -> int:
    return sum(t["kicked"] for gw in lab.flowpin_gateways()
               for t in lab.ask(gw, "show-vpn-context")["tunnels"])


def _check_resume_metrics(lab: Lab) -> None:
    """The kick's counters and the 752101 report's resumed/held in Prometheus, on the
    gateway that kicked (bo-gw: the sender is bo-client), equal to what the daemon says."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + 15  # the report comes 5 s after UP
    while not any("752101" in ln and "kicked" in ln
                  for ln in lab.daemon_log("bo-gw").read_text().splitlines()):
        assert time.monotonic() < deadline, "no 752101 resume report"
        time.sleep(0.5)
    (t,) = lab.ask("bo-gw", "show-vpn-context")["tunnels"]
    r = lab.exec("bo-gw", ["curl", "-sf", "http://127.0.0.1:9477/metrics"],
                 stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0
    got = {s.name: s.value for f in text_string_to_metric_families(r.stdout)
           for s in f.samples if s.labels == {"tunnel": t["tunnel"], "peer": t["peer"]}}
    assert got["flowpin_tunnel_resume_kicks_total"] == t["kicked"] > 0, got
    assert got["flowpin_tunnel_resume_kicks_limited_total"] == t["kicks_limited"]
    assert got["flowpin_tunnel_resumed_flows_total"] == t["resumed_flows"] >= 1, got
    assert got["flowpin_tunnel_resume_held_flows_total"] == t["resume_held_flows"] >= 1, got


def test_held_flow_resumes_fast_with_the_kick_and_stock_without(rlab: Lab) -> None:
    set_kick(rlab, True)
    before = _kicked(rlab)
    # The witness: what both gateways send on the WAN, during the outage and after it.
    with WanCapture(rlab) as cap:
        on = measure(rlab, OUTAGE_S, "child", 6900)
    assert cap.summary.leaks == [], cap.summary.as_dict()
    assert cap.summary.esp > 0, cap.summary.as_dict()
    kicked = _kicked(rlab) - before
    assert kicked > 0, "no ICMP unreachable sent during the outage"
    assert on["resume_ms"] is not None and on["resume_ms"] <= KICKED_BOUND_MS, on
    shown = vpn_context(rlab.ask("bo-gw", "show-vpn-context"), detail=True)
    assert "resume kick on: " in shown, shown
    _check_resume_metrics(rlab)

    set_kick(rlab, False)
    before = _kicked(rlab)
    off = measure(rlab, OUTAGE_S, "child", 6901)
    assert _kicked(rlab) == before, "kick off, yet kicks were sent"
    assert "resume kick off: " in vpn_context(rlab.ask("bo-gw", "show-vpn-context"), detail=True)
    assert off["resume_ms"] is not None and off["resume_ms"] >= STOCK_AT_LEAST_MS, off
    lines = rlab.daemon_log("bo-gw").read_text().splitlines()
    assert any("752101" in ln and "resumed" in ln and "kicked" in ln for ln in lines)


CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of /proc/net/tcp's timer column


def _retransmit_timers(pid: int, ports: range) -> dict[int, tuple[float, int]]:
    """The retransmission timers of the established TCP sockets to or from ``ports`` in
    the network namespace of process ``pid``, as the kernel itself shows them in
    /proc/PID/net/tcp{,6} (an independent witness: the sockets' own state, what ss prints
    as timer:(on,...), read without starting a process, which takes seconds in an
    emulated VM): port -> (seconds until the timer fires, retransmissions so far)."""
    out = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as fh:
            next(fh)  # the header
            for line in fh:
                # sl local rem st tx:rx tr:when retrnsmt ...
                f = line.split()
                if f[3] != "01":  # TCP_ESTABLISHED
                    continue
                timer, when = f[5].split(":")
                if timer != "01":  # ICSK_TIME_RETRANS (and loss probe, reordering): ss's "on"
                    continue
                local, remote = (int(a.rsplit(":", 1)[1], 16) for a in f[1:3])
                port = local if local in ports else remote if remote in ports else None
                if port is not None:
                    out[port] = (int(when, 16) / CLK_TCK, int(f[6], 16))
    return out


def _receive_buffer_drops(lab: Lab) -> dict[str, int]:
    """Each flowpin gateway's UDP datagrams dropped for a full receive buffer
    (UdpRcvbufErrors of its namespace, read through its daemon's /proc entry): under
    kernel-libipsec, ESP that charon's socket had no room for."""
    out = {}
    for gw in lab.flowpin_gateways():
        pid = lab.daemon_pid(gw)
        assert pid is not None, f"no flowpin daemon on {gw}"
        out[gw] = snmp_counter(pid, "Udp", "RcvbufErrors")
    return out


class _TimerWatch:
    """The senders' retransmission timers in each sender namespace (through a process
    parked there), read over and over (one thread each) from shortly before the outage
    ends until closed. The test takes each namespace's first read that began after UP,
    however long the lab then took to report UP (an emulated VM: seconds)."""

    SENDERS = (("bo-client", 7300), ("ho-server", 7400))

    def __init__(self, lab: Lab, n: int, start_in: float) -> None:
        self.n, self.start_in = n, start_in
        self.parked = {node: lab.popen(node, ["sleep", "3600"]) for node, _b in self.SENDERS}
        # per node: (time the read began, time it ended, {port: (seconds left, retrans)})
        self.reads: dict[str, list[tuple[float, float, dict[int, tuple[float, int]]]]] = {
            node: [] for node, _base in self.SENDERS}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=sender, daemon=True)
                        for sender in self.SENDERS]
        for th in self.threads:
            th.start()

    def _run(self, node: str, base: int) -> None:
        if self.stop.wait(self.start_in):
            return
        pid = self.parked[node].pid
        while not self.stop.wait(0.01):
            began = time.time()
            timers = _retransmit_timers(pid, range(base, base + self.n))
            self.reads[node].append((began, time.time(), timers))

    def first_after(self, t: float) -> tuple[float, dict[int, tuple[float, int]]] | None:
        """Each node's first read begun at or after ``t``, together: (when the later of
        them ended, their timers). Fire times are reckoned from the end of the reads, so a
        timer is never taken for earlier than it is."""
        ends, timers = [], {}
        for reads in self.reads.values():
            got = next(((end, tm) for began, end, tm in reads if began >= t), None)
            if got is None:
                return None
            ends.append(got[0])
            timers.update(got[1])
        return max(ends), timers

    def close(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(timeout=30)
        for p in self.parked.values():
            p.kill()
            p.wait()


def test_held_transfers_resume_byte_exact_after_60s_in_both_directions(rlab: Lab) -> None:
    """The target itself: 50 transfers in each direction (bo-client -> ho-server, whose held
    segments are bo-gw's to kick, and ho-server -> bo-client, ho-gw's), all held through one
    60 s outage, every one arriving byte for byte (sha256).

    What the kick governs, read from the senders' sockets when the tunnel is back: every
    held sender's retransmission timer fires within 2 s of UP (stock TCP: 10-60 s). Then
    end to end (first byte at the receiver): 90 of 100 move again within 1 s and all within
    3 s. Not all within 1 s, because here 100 senders restart at once into charon's
    userspace ESP (kernel-libipsec), whose socket overflows for about a second after UP
    (the gateways' UdpRcvbufErrors: 44-1,250 packets each over 11 runs; the message of a
    failure gives them): a first retransmission lost there comes again one (doubled) RTO
    later -- the network's losses, not the hold's.

    Each sender makes up at most CATCH_UP_S of its pace after UP. Making up the whole
    outage at once (100 x 1.2 MB) kept that socket overflowing for 4 s after UP
    (4,500-10,900 packets lost per gateway in three runs), long enough for one flow's
    retransmission to be lost three times in a row: seen once at 4.06 s, in CI."""
    from lab.flap import flap
    from lab.traffic import Transfer

    set_kick(rlab, True)
    n, rate = RESUME_FLOWS, RESUME_RATE
    # Paced from the start: at UP each sender has its socket's send buffer and CATCH_UP_S
    # of backlog to send; each is stopped 8 s after UP (what is measured happens within 3 s
    # of it), whenever the outage began (an emulated VM takes seconds to start it). The
    # size only bounds them.
    size = int(rate * (LONG_OUTAGE_S + 60))
    transfers = [Transfer(rlab, to, size, rate=rate, port=base + i, seed=i, timeout=600,
                          gated=True, reverse=reverse, catch_up=CATCH_UP_S)
                 for to, base, reverse in (("10.2.0.10", 7300, False),
                                           ("10.1.0.10", 7400, True))
                 for i in range(n)]
    watch = None
    try:
        for tr in transfers:
            tr.connected()
        for tr in transfers:
            tr.go()
        time.sleep(3.0)
        watch = _TimerWatch(rlab, n, start_in=LONG_OUTAGE_S - 2)
        flap(rlab, "child", LONG_OUTAGE_S)
        up_wall = max(t["since"] for gw in rlab.flowpin_gateways()
                      for t in rlab.ask(gw, "show-vpn-context")["tunnels"])
        drops_at_up = _receive_buffer_drops(rlab)
        time.sleep(2.0)
        watch.close()
        time.sleep(max(0.0, up_wall + 8 - time.time()))
        for tr in transfers:
            tr.stop()
        results = [tr.wait(timeout=600) for tr in transfers]
        drops = {gw: count - drops_at_up[gw]
                 for gw, count in _receive_buffer_drops(rlab).items()}
    finally:
        if watch is not None:
            watch.close()
        for tr in transfers:
            tr.kill()
    bad = [i for i, (s, g) in enumerate(results) if "error" in s or "error" in g
           or g["bytes"] != s["bytes"] or g["sha256"] != s["sha256"]]
    assert bad == [], f"transfers not byte-exact: {bad}; the first: {results[bad[0]]}"
    # Each was held: a gap in what arrived spans the outage (or the test proves nothing).
    held = [i for i, (_s, got) in enumerate(results)
            if any(g2 - g1 >= LONG_OUTAGE_S - 5 for g1, g2 in got["gaps"])]
    assert len(held) == len(results), f"transfers not held by the outage: " \
        f"{sorted(set(range(len(results))) - set(held))}"
    kicks = {gw: [(t["kicked"], t["kicks_limited"]) for t in rlab.ask(gw, "show-vpn-context")[
        "tunnels"]] for gw in rlab.flowpin_gateways()}
    network = f"(kicked, limited) per gateway: {kicks}; packets the gateways' UDP sockets " \
        f"dropped after UP (receive buffer full): {drops}"
    # Senders still held when their sockets were read (retransmitting: count > 0; the
    # others had moved again already) send again within 2 s of UP: about one base RTO
    # after UP for most, but a sender whose last two answers before UP were both ignored
    # (the repair undoes one doubling per retransmission) sits at four times its base RTO,
    # seen here at UP + 1.03 - 1.56 s for 9 of 100 in one run on clsact. Stock TCP after
    # 60 s: 10-60 s. The first read after UP must end within the first second, or it would
    # see nothing held (and after 2 s it could not see a timer late by that bound).
    first = watch.first_after(up_wall)
    assert first is not None, "the senders' timers were not read after UP"
    timers_at, timers = first
    assert timers_at - up_wall < TARGET_MS / 1000, \
        f"the senders' timers read {timers_at - up_wall:.2f} s after UP"
    held_senders = {p: v for p, v in timers.items() if v[1] > 0}
    late = {p: round(timers_at - up_wall + left, 3) for p, (left, _n) in held_senders.items()
            if (timers_at - up_wall + left) * 1000 > 2 * TARGET_MS}
    assert late == {}, f"held senders whose timer fires more than {2 * TARGET_MS} ms after " \
        f"UP: {late}; {network}"
    waits = [min((g2 - up_wall for _g1, g2 in got["gaps"] if g2 >= up_wall), default=None)
             for _sent, got in results]
    slow = [(i, w) for i, w in enumerate(waits) if w is None or w * 1000 > TARGET_MS]
    assert len(slow) <= len(results) // 10, \
        f"held flows that did not resume within {TARGET_MS} ms: {slow}; {network}"
    assert all(w is not None and w <= 3 * TARGET_MS / 1000 for w in waits), \
        f"held flows that did not resume within 3 s: {slow}; {network}"
    print(f"resume after {LONG_OUTAGE_S:.0f} s, {len(waits)} flows: max "
          f"{max(w for w in waits if w is not None) * 1000:.0f} ms, {len(slow)} over "
          f"{TARGET_MS} ms; {len(held_senders)} senders still held at UP + "
          f"{timers_at - up_wall:.2f} s, their timers firing by UP + "
          f"{max((timers_at - up_wall + t for t, _n in held_senders.values()), default=0):.2f} s; "
          f"UDP receive-buffer drops after UP: {drops}")
