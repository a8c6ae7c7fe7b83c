"""``flowpin bench datapath``: cost of the data path, measured in the kernel.

Per-packet costs come from BPF_PROG_TEST_RUN (the kernel times ``repeat`` runs of the
program on one 64-byte TCP frame and reports the mean); ``empty_prog_ns`` is the same
harness running an empty SCHED_CLS program, so "cost above the empty program" is the
data path's own cost. Those hit one flow again and again, so it stays in cache; the
spread figure (:func:`spread_hits`) runs one crafted packet per test run over 1M flows,
each a different flow, to price a table that misses the caches, and
:mod:`bench.ct_spread` takes the same pair for netfilter conntrack on a real send path.
Map-write costs are timed in user space around the single bpf(2) call that does them.
Memory per flow is the kernel's own accounting (``memlock`` in /proc/self/fdinfo of the
map) divided by max_entries.

Prints ONE JSON object. Runs in about two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

from bench import ct_spread
from bench.common import machine
from bench.progs import compile_empty, source
from controlplane.datapath import Datapath, DatapathConfig
from controlplane.flow_table import FlowTable
from controlplane.flow_types import CONST, Side
from controlplane.libbpf import fdinfo, prog_test_run
from controlplane.sweeper import Sweeper
from lab import packets as tr

CLIENT, SERVER, CPORT, SPORT = "10.1.0.5", "10.2.0.9", 40000, 80
TUN = 1
SIZES = (1, 1000, 100_000, 1_000_000)
FLOWS_MAX = 1 << 20
SPREAD_FLOWS = 1_000_000  # the spread stream covers this many established flows
CACHED_HIT_MAX_NS = 50  # target: an established hit at 1M flows, above the empty program
NEW_FLOW_MARGIN_NS = 60  # target: a new flow, above the kernel's own hash insert
NEW_FLOW_ROUNDS = 3  # fresh tables per round, the data path's and the kernel insert's
NEW_FLOW_CHUNKS = 10  # slices of each round's runs, interleaved between the two
_ESTABLISHED = Side.SYN | Side.ACK


def _frame(flags: str) -> bytes:
    return tr.tcp(CLIENT, SERVER, CPORT, SPORT, flags, seq=1, ack=1, size=64)


def memlock_bytes(map_fd: int) -> int:
    """The kernel's accounting of a map's memory (what bpftool shows as memlock)."""
    memlock = fdinfo(map_fd).get("memlock")
    if memlock is None:
        raise RuntimeError("no memlock in fdinfo")
    return int(memlock)


def _run(fd: int, frame: bytes, repeat: int) -> tuple[int, int]:
    res = prog_test_run(fd, frame, repeat)
    return res.duration_ns, res.retval


def _best(fd: int, frame: bytes, repeat: int, rounds: int = 3) -> int:
    """Lowest of a few rounds of ``repeat`` runs: the least disturbed by the other core."""
    return min(_run(fd, frame, repeat)[0] for _ in range(rounds))


def calibrate(frame: bytes, repeat: int, empty: int) -> dict[str, float]:
    """Price of one helper call and of one 16-byte-key hash lookup on this machine."""
    import bcc

    b = bcc.BPF(text=source("calibrate.c").encode())
    calls = _best(b.load_func(b"cal_calls", bcc.BPF.SCHED_CLS).fd, frame, repeat)
    h = b[b"cal_hash"]
    k = h.Key()
    for i in range(4):
        k.w[i] = i + 1
    h[k] = h.Leaf(1)
    lookup = _best(b.load_func(b"cal_lookup", bcc.BPF.SCHED_CLS).fd, frame, repeat)
    lpm = b[b"cal_lpm"]
    lk = lpm.Key()
    lk.prefixlen, lk.addr = 16, 0x0000010A  # 10.1.0.0/16 in network order
    lpm[lk] = lpm.Leaf(1)
    lpm_ns = _best(b.load_func(b"cal_lpm_lookup", bcc.BPF.SCHED_CLS).fd, frame, repeat)
    b.cleanup()
    # htab_insert_new_key_ns is taken by new_flows(), interleaved with the new flows
    return {"helper_call_ns": round((calls - empty) / 10, 1), "htab_lookup_ns": lookup - empty,
            "lpm_lookup_ns": lpm_ns - empty}


def new_flows(syn: bytes, ack: bytes, repeat: int, rounds: int = NEW_FLOW_ROUNDS,
              chunks: int = NEW_FLOW_CHUNKS) -> dict[str, Any]:
    """The new-flow cost and the kernel's own insert it is judged against, taken side by
    side: each round loads a fresh bench-only data path (-DFP_BENCH_VARY_KEY: each run of
    one SYN creates a distinct flow) and a fresh calibration insert program, then runs
    ``repeat`` creations on each, ``chunks`` slices of repeat/chunks runs interleaved (who
    goes first alternating), so both tables grow from empty to ``repeat`` flows alike and a
    disturbance from the other core lands on both. Taken minutes apart, one run each, the
    two moved by up to a hundred ns on a shared machine, more than the margin judged.
    The process is pinned to one CPU meanwhile: each program's key counter is per CPU,
    and a run migrated by the harness's cond_resched would repeat keys."""
    import bcc

    per = max(1, repeat // chunks)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    runs: dict[str, list[float]] = {"new_flow": [], "insert": []}
    try:
        for r in range(rounds):
            cfg = DatapathConfig(instance="bench-new", pin=False, flows4_max=FLOWS_MAX,
                                 flows6_max=1024, tunnels_max=64, pickup_s=0,
                                 cflags=["-DFP_BENCH_VARY_KEY"])
            dp = Datapath(cfg).load()
            cal = bcc.BPF(text=source("calibrate.c").encode())
            try:
                t = dp.table
                t.add_selector(TUN, "10.0.0.0/8", "10.0.0.0/8")
                t.set_tunnel(TUN, up=True, preserve=True)
                progs = {"new_flow": (dp.prog_fd("fp_outbound"), syn),
                         "insert": (cal.load_func(b"cal_insert", bcc.BPF.SCHED_CLS).fd, ack)}
                total = dict.fromkeys(progs, 0)
                for c in range(chunks):
                    for name in (list(progs) if (c + r) % 2 == 0 else list(progs)[::-1]):
                        fd, frame = progs[name]
                        res = prog_test_run(fd, frame, per)
                        if res.retval != 0:
                            raise RuntimeError(f"new-flow benchmark: {name} refused a run")
                        total[name] += res.duration_ns
                created = t.counters()["PASS_NEW"]
                if created != per * chunks:
                    raise RuntimeError(f"new-flow benchmark created {created} flows, "
                                       f"not {per * chunks}")
            finally:
                dp.close()
                cal.cleanup()
            for name in runs:
                runs[name].append(round(total[name] / chunks, 1))
    finally:
        os.sched_setaffinity(0, cpus)
    diffs = [n - i for n, i in zip(runs["new_flow"], runs["insert"], strict=True)]
    return {"new_flow_ns": statistics.median(runs["new_flow"]),
            "insert_ns": statistics.median(runs["insert"]),
            "new_minus_insert_ns": statistics.median(diffs),
            "rounds": rounds, "chunks": chunks, "runs": per * chunks, "per_round": runs}


def filler_flow(i: int) -> tuple[str, int, str, int]:
    """Flow ``i`` of :func:`fill_flows` as (LAN client, its port, remote, remote port):
    flow 0 is the benchmark's own, the others go to distinct remotes 10.200-249.x.y."""
    if i == 0:
        return CLIENT, CPORT, SERVER, SPORT
    remote = f"10.{200 + (i >> 16) % 50}.{(i >> 8) & 0xFF}.{i & 0xFF}"
    return CLIENT, 1024 + i % 60000, remote, 443


def _word(addr: str) -> int:
    """An IPv4 address as the data path compares it: the raw network-order word."""
    return int.from_bytes(bytes(int(o) for o in addr.split(".")), "little")


def fill_flows(t: FlowTable, n: int, now_s: int, generation: int,
               idle_every: int = 0, idle_s: int = 0) -> None:
    """Put ``n`` established IPv4 flows of tunnel TUN (:func:`filler_flow`) in the table
    with one batch update, each keyed as the data path keys it, the LAN side on the client.
    Every ``idle_every``-th flow was last forwarded ``idle_s`` seconds ago."""
    table = t.flows4
    ksz, vsz = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
    keys = bytearray(ksz * n)
    vals = bytearray(vsz * n)
    kfmt, vfmt = struct.Struct("<IIHHB3x"), struct.Struct("<IHBB4III2Q")
    a_word = _word(CLIENT)
    acct = (10 << CONST["FP_ACCT_BYTES_BITS"]) | 640
    lan, far = _ESTABLISHED | Side.OPENER | Side.LAN, _ESTABLISHED
    ours = _word(SERVER)
    for i in range(n):
        # filler_flow(i), without building its strings (this loop runs 1M times)
        if i == 0:
            cport, rport, r_word = CPORT, SPORT, ours
        else:
            cport, rport = 1024 + i % 60000, 443
            r_word = 10 | (200 + (i >> 16) % 50) << 8 | ((i >> 8) & 0xFF) << 16 | (i & 0xFF) << 24
        # endpoint 0 is the lower raw address word (fp_flow_key_build)
        if a_word < r_word:
            k = (a_word, r_word, socket_htons(cport), socket_htons(rport), 6)
            sides = (lan, far)
        else:
            k = (r_word, a_word, socket_htons(rport), socket_htons(cport), 6)
            sides = (far, lan)
        kfmt.pack_into(keys, i * ksz, *k)
        last = now_s - idle_s if idle_every and i and i % idle_every == 0 else now_s
        vfmt.pack_into(vals, i * vsz, generation, TUN, *sides,
                       1, 1, 1, 1, now_s - 100, last, acct, acct)
    ck = (table.Key * n).from_buffer(keys)
    cv = (table.Leaf * n).from_buffer(vals)
    table.items_update_batch(ck, cv)


def llc() -> dict[str, Any]:
    """CPU 0's last-level cache as sysfs describes it (in a virtual machine: as the
    hypervisor describes it; other guests on the host may share it)."""
    best: dict[str, Any] = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (d / "type").read_text().strip() == "Instruction":
                continue
            level = int((d / "level").read_text())
            size = (d / "size").read_text().strip()
            shared = (d / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        nbytes = int(size.rstrip("KMG")) * mult
        if not best or level > best["level"]:
            best = {"level": level, "bytes": nbytes, "shared_cpus": shared}
    return best


def evict_bytes(cache: dict[str, Any]) -> int:
    """How much to write to evict the last-level cache: twice its size, at most 1 GiB."""
    return min(2 * cache.get("bytes", 64 << 20), 1 << 30)


def _mean(v: list[int]) -> float:
    return round(statistics.fmean(v), 1)


def spread_hits(t: FlowTable, fd: int, fd_empty: int, flows: int, packets: int,
                rounds: int = 3, seed: int = 1) -> dict[str, Any]:
    """Established hits on a stream spread uniformly over the ``flows`` flows in ``t``
    (filled by :func:`fill_flows`): each round runs ``packets`` distinct flows, drawn at
    random without replacement (no flow twice in the whole measurement, so none is warm
    from an earlier packet), in random order (so a prefetcher cannot guess the next
    bucket: the table's elements sit in memory in fill order). One BPF_PROG_TEST_RUN per
    packet (repeat=1): the kernel times that one run. Interleaved packet by packet with
    the same harness running the empty program on the same packet (what one timed run
    costs without the program) and the data path on its one benchmark flow (the cached
    hit, at repeat=1 too), so a machine that drifts moves all three alike."""
    rng = random.Random(seed)
    # flow 0 is the cached stream's: never in the spread one
    packets = min(packets, (flows - 1) // rounds)
    chosen = rng.sample(range(1, flows), packets * rounds)
    own = _frame("A")
    c0 = t.counters()
    per_round: dict[str, list[float]] = {"empty": [], "cached": [], "spread": []}
    last: list[int] = []
    empty_last: list[int] = []
    cache = llc()
    # writing twice the last-level cache evicts the table, which filling it has just
    # brought in (1M flows fit in a big LLC): each round starts with none of it cached
    flush = ctypes.create_string_buffer(evict_bytes(cache))
    for r in range(rounds):
        frames = []
        for i in chosen[r * packets:(r + 1) * packets]:
            src, sport, dst, dport = filler_flow(i)
            frames.append(tr.tcp(src, dst, sport, dport, "A", seq=1, ack=1, size=64))
        ctypes.memset(flush, r + 1, len(flush))
        empty, cached, spread = [], [], []
        for f in frames:
            empty.append(prog_test_run(fd_empty, f, 1).duration_ns)
            cached.append(prog_test_run(fd, own, 1).duration_ns)
            res = prog_test_run(fd, f, 1)
            if res.retval != 0:
                raise RuntimeError("a spread packet was not passed on its flow")
            spread.append(res.duration_ns)
        per_round["empty"].append(_mean(empty))
        per_round["cached"].append(_mean(cached))
        per_round["spread"].append(_mean(spread))
        last, empty_last = spread, empty
    c1 = t.counters()
    passed = c1["PASS_FLOW"] - c0["PASS_FLOW"]
    if passed != 2 * packets * rounds or c1["PASS_NEW"] != c0["PASS_NEW"]:
        raise RuntimeError(f"spread benchmark: {passed} established hits of "
                           f"{2 * packets * rounds}, {c1['PASS_NEW'] - c0['PASS_NEW']} new")
    # each figure: the median over rounds of the round means; the differences are taken
    # within a round (its three streams were interleaved), then their median
    def med(v: list[float]) -> float:
        return round(statistics.median(v), 1)

    def minus(a: str, b: str) -> float:
        return med([x - y for x, y in zip(per_round[a], per_round[b], strict=True)])

    above = {"cached": minus("cached", "empty"), "spread": minus("spread", "empty")}
    table = memlock_bytes(t.flows4.map_fd)
    last.sort()
    return {
        "flows": flows, "packets_per_round": packets, "rounds": rounds,
        "order": "random, each flow at most once",
        "empty_ns": med(per_round["empty"]), "cached_ns": med(per_round["cached"]),
        "spread_ns": med(per_round["spread"]),
        "above_empty_ns": above,
        "miss_penalty_ns": round(above["spread"] - above["cached"], 1),
        "spread_last_round": {"median_ns": last[len(last) // 2],
                              "p99_ns": last[int(len(last) * 0.99)],
                              "empty_median_ns": sorted(empty_last)[len(empty_last) // 2]},
        "per_round": per_round,
        "table_bytes": table, "llc": cache, "evicted_bytes": len(flush),
        "table_exceeds_llc": bool(cache) and table > cache["bytes"],
    }


def socket_htons(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


def _timed(fn: Any, rounds: int = 5) -> float:
    """Median milliseconds of ``fn()``."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def _spread_own_table(fd_empty: int, flows: int, packets: int, now_s: int) -> dict[str, Any]:
    """:func:`spread_hits` on a data path of its own with a table of ``flows`` entries
    (``--spread-flows``: a table bigger than the last-level cache when 1M flows fit in it)."""
    cfg = DatapathConfig(instance="bench-spread", pin=False, flows4_max=flows,
                         flows6_max=1024, tunnels_max=64, pickup_s=0)
    sdp = Datapath(cfg).load()
    try:
        st = sdp.table
        st.add_selector(TUN, "10.0.0.0/8", "10.0.0.0/8")
        st.set_tunnel(TUN, up=True, preserve=True)
        fill_flows(st, flows, now_s, 0)
        return spread_hits(st, sdp.prog_fd("fp_outbound"), fd_empty, flows, packets)
    finally:
        sdp.close()


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The data path's per-packet targets, judged on this run's figures (all above the
    empty program): an established hit at 1M flows on a cached flow within
    CACHED_HIT_MAX_NS, and a new flow within NEW_FLOW_MARGIN_NS of the kernel's own
    insert into a preallocated hash on this CPU (the calibration). The spread figure has
    no target: it is reported as measured."""
    above = result["above_empty_ns"]
    insert = result["calibration"]["htab_insert_new_key_ns"]
    limit = insert + NEW_FLOW_MARGIN_NS
    return {
        "established_hit_cached_1m": {"above_empty_ns": above["established_hit_1m"],
                                      "max_ns": CACHED_HIT_MAX_NS,
                                      "met": above["established_hit_1m"] <= CACHED_HIT_MAX_NS},
        "new_flow": {"above_empty_ns": above["new_flow"], "kernel_insert_ns": insert,
                     "margin_ns": NEW_FLOW_MARGIN_NS, "max_ns": limit,
                     "met": above["new_flow"] <= limit},
    }


def run(repeat: int = 1_000_000, spread_packets: int = 200_000,
        spread_flows: int = SPREAD_FLOWS, conntrack: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {}
    notes: list[str] = []
    ack, syn = _frame("A"), _frame("S")
    assert len(ack) == 64 and len(syn) == 64

    b_empty, fd_empty = compile_empty()
    empty = _best(fd_empty, ack, repeat)
    result["empty_prog_ns"] = empty
    result["calibration"] = calibrate(ack, repeat, empty)

    cfg = DatapathConfig(instance="bench", pin=False, flows4_max=FLOWS_MAX, flows6_max=1024,
                         tunnels_max=64, pickup_s=0)
    dp = Datapath(cfg).load()
    t = dp.table
    t.add_selector(TUN, "10.0.0.0/8", "10.0.0.0/8")
    t.set_tunnel(TUN, up=True, preserve=True)
    fd = dp.prog_fd("fp_outbound")
    now_s = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 10**9

    hit: dict[str, int] = {}
    for n in SIZES:
        t.clear_flows()
        fill_flows(t, n, now_s, 0)
        ns, rv = _run(fd, ack, 1)
        if rv != 0 or t.counters()["PASS_FLOW"] < 1:
            raise RuntimeError("benchmark packet did not hit its flow")
        hit[str(n)] = _best(fd, ack, repeat)
    result["established_hit_ns"] = hit
    # the table holds SIZES[-1] flows: the same hit, on a stream spread over all of them
    if spread_flows == SIZES[-1]:
        result["established_spread"] = spread_hits(t, fd, fd_empty, spread_flows,
                                                   spread_packets)
    else:
        result["established_spread"] = _spread_own_table(fd_empty, spread_flows,
                                                         spread_packets, now_s)
    b_empty.cleanup()

    # held: same flow, tunnel down and preserving
    t.set_tunnel(TUN, up=False)
    before = t.counters()["DROP_HELD"]
    result["held_ns"] = _best(fd, ack, repeat)
    if t.counters()["DROP_HELD"] - before < repeat:
        raise RuntimeError("held benchmark did not hold")
    t.set_tunnel(TUN, up=True)

    # the WAN guard: ESP (exempt before any lookup), internet traffic (one LPM miss),
    # tunnel traffic in clear (LPM hit, counted, dropped)
    gw_a, gw_b = "192.0.2.1", "192.0.2.2"
    esp = tr._ip(gw_a, gw_b, 50, b"\0" * 30)
    internet = tr.tcp(CLIENT, "198.51.100.7", CPORT, 443, "A", seq=1, ack=1, size=64)
    guard_fd = dp.prog_fd("fp_wan_out")
    if _run(guard_fd, ack, 1)[1] != 2 or _run(guard_fd, esp, 1)[1] == 2:
        raise RuntimeError("WAN guard benchmark packets got the wrong verdict")
    result["wan_guard_ns"] = {"esp": _best(guard_fd, esp, repeat),
                              "no_tunnel": _best(guard_fd, internet, repeat),
                              "cleartext_dropped": _best(guard_fd, ack, repeat)}

    # memory: the kernel's accounting of the preallocated 1M-entry hash
    mem4 = memlock_bytes(t.flows4.map_fd)
    result["bytes_per_flow"] = round(mem4 / t.flows4.max_entries, 1)
    mem6 = memlock_bytes(t.flows6.map_fd)
    result["bytes_per_flow_v6"] = round(mem6 / t.flows6.max_entries, 1)

    # pin / release / teardown of a tunnel with 1M flows: one map write each
    t.clear_flows()
    fill_flows(t, 1_000_000, now_s, 0)
    result["pin_ms_1m"] = round(_timed(lambda: t.pin(TUN)), 4)
    result["release_ms_1m"] = round(_timed(lambda: t.release(TUN)), 4)
    t.pin(TUN)
    result["teardown_ms_1m"] = round(_timed(lambda: t.bump_generation(TUN), rounds=1), 4)
    before = t.counters()["DROP_STALE"]
    _run(fd, ack, 1)
    if t.counters()["DROP_STALE"] != before + 1:
        raise RuntimeError("teardown did not make the flow stale")

    # sweep of 1M flows, 10% idle past the conn timeout (100k removed); the sweeper is
    # given its "now", so flow times are synthetic (the machine may be up < 4000 s)
    now_s = max(now_s, 100_000)
    t.clear_flows()
    gen = t.tunnel(TUN).generation
    fill_flows(t, 1_000_000, now_s, gen, idle_every=10, idle_s=4000)
    sw = Sweeper(t)
    t0 = time.perf_counter()
    removed = sw.sweep(now_s)
    result["sweep_s_1m"] = round(time.perf_counter() - t0, 3)
    result["sweep_1m_removed"] = len(removed)
    # sweep of 1M flows that are all stale (teardown of a 1M-flow tunnel)
    t.clear_flows()
    fill_flows(t, 1_000_000, now_s, gen)
    t.bump_generation(TUN)
    t0 = time.perf_counter()
    removed = sw.sweep(now_s)
    result["sweep_s_1m_all_stale"] = round(time.perf_counter() - t0, 3)
    if len(removed) != 1_000_000:
        raise RuntimeError(f"stale sweep removed {len(removed)} flows, not 1M")
    dp.close()

    # new flows, and the kernel's insert they are judged against, side by side
    nf = new_flows(syn, ack, min(repeat, 1_000_000))
    result["new_flow"] = nf
    result["new_flow_ns"] = nf["new_flow_ns"]
    result["calibration"]["htab_insert_new_key_ns"] = nf["insert_ns"] - empty

    if conntrack:
        # the same cached/spread pair for netfilter conntrack, on its own harness
        try:
            result["conntrack_spread"] = ct_spread.run(spread_flows, spread_packets, 3,
                                                       evict_bytes(llc()))
        except Exception as exc:  # reported beside the data path's figures, not instead
            result["conntrack_spread"] = {"error": f"{type(exc).__name__}: {exc}"}

    result["above_empty_ns"] = {
        "established_hit_1m": hit["1000000"] - empty,
        "new_flow": result["new_flow_ns"] - empty,
        "held": result["held_ns"] - empty,
        # against the empty program at repeat=1 on the same packets, not empty_prog_ns
        "established_spread": result["established_spread"]["above_empty_ns"]["spread"],
        **{f"wan_guard_{k}": v - empty for k, v in result["wan_guard_ns"].items()},
    }
    result["targets"] = targets(result)
    notes += [
        f"ns per packet: kernel BPF_PROG_TEST_RUN mean over repeat={repeat} runs of one "
        "64-byte TCP frame on the outbound program, best of 3 rounds; empty_prog_ns is the "
        "same harness on an empty SCHED_CLS program",
        "established_hit_ns: one flow of N (filled with one batch update) is hit every run, "
        "so its bucket stays in cache: the cached figure, the CPU cost at N flows, not a "
        "cache-miss workload (that is established_spread)",
        "new_flow_ns: a build with -DFP_BENCH_VARY_KEY xors a per-CPU counter into the key, "
        "so each run of one SYN creates a flow (LPM classification + insert) in a table "
        "growing from 0 to 1M; the extra per-CPU lookup (a few ns) is included, as in the "
        "kernel insert it is judged against. Taken side by side with that insert "
        f"(new_flow: {NEW_FLOW_ROUNDS} rounds, each on fresh tables, in "
        f"{NEW_FLOW_CHUNKS} interleaved slices, one CPU): new_flow_ns and "
        "calibration.htab_insert_new_key_ns are medians over rounds of the round means, "
        "new_flow.new_minus_insert_ns the median of the within-round differences",
        "established_spread: the established hit on a stream spread uniformly over "
        f"{spread_flows:,} established flows, the cost when the table misses the caches: "
        "each packet a flow drawn at random without replacement (no flow twice in the whole "
        "measurement), in random order (the table's elements sit in memory in fill order, "
        "so a prefetcher cannot guess the next one), one BPF_PROG_TEST_RUN each "
        "(repeat=1), its own crafted 64-byte frame; interleaved packet by packet with the "
        "empty program on the same frame (empty_ns: what one timed run costs without any "
        "program: the kernel's clock read and bottom-half disable around the run) and with "
        "the data path on its one benchmark flow (cached_ns, the cached hit under the same "
        "harness); figures are medians over rounds of the round means, above_empty_ns "
        "medians of the within-round differences, miss_penalty_ns = above_empty_ns "
        "spread - cached. "
        "Included: the program's own work and every cache and TLB miss it takes on the "
        "bucket, the flow element and the tunnel entry. Not included: the syscall, the "
        "skb build and the copy of the frame (outside the kernel's timer; the frame is "
        "therefore in cache, as it is after a driver touched it). The mean includes the "
        "occasional interrupt in a timed run, equally likely in all three streams. "
        "table_bytes (the map's memlock) against llc (sysfs of CPU 0; in a virtual machine "
        "the cache the hypervisor reports, which other guests may share); each round "
        "starts by writing evicted_bytes (twice the LLC, at most 1 GiB) so that the table, "
        "brought into the cache by filling it, is not there when the round starts, even "
        "when it would fit (table_exceeds_llc false); --spread-flows runs it on a bigger "
        "table. No target is set for it",
        "conntrack_spread: netfilter conntrack alike, on a real send path since it has no "
        "test-run harness: a namespace (fpbench-ct) whose one-rule nftables output chain "
        "uses conntrack holds as many unreplied UDP entries as the spread stream has "
        "flows; one process sends datagrams on those tuples with sendmmsg, timed by its "
        "own CPU clock, to one entry (cached) and to a different entry per datagram drawn "
        "at random and never twice, the LLC evicted before each stream (spread), each with "
        "conntrack on and off (the table deleted: no conntrack hook), alternating; "
        "conntrack_ns = on - off per stream (its hooks, lookup, refcount and timeout "
        "update, the one rule; median over rounds of the within-round differences), "
        "miss_penalty_ns = conntrack_ns spread - cached; path_ns = the whole send path "
        "per datagram (median over rounds). "
        "nf_conntrack_max and nf_conntrack_buckets (global) are raised for the run when "
        "below the entry count, so the hash has a bucket per entry as flowpin's has, and "
        "restored (raised_for_run says which). Compare with established_spread by what "
        "each adds per packet, not by totals: the harnesses differ",
        "targets: established_hit_cached_1m = established_hit_ns at 1M flows minus "
        f"empty_prog_ns, at most {CACHED_HIT_MAX_NS} ns; new_flow = new_flow_ns minus "
        "empty_prog_ns, at most the kernel's own insert of a new key into a preallocated "
        f"hash on this CPU (calibration.htab_insert_new_key_ns, the same table size, key "
        f"and per-CPU counter) + {NEW_FLOW_MARGIN_NS} ns",
        "held_ns: tunnel DOWN + PRESERVE: lookup, drop, tunnel counter, rate-limited demand",
        "wan_guard_ns: the WAN egress guard on an ESP packet between the gateways (exempt "
        "before any lookup), on LAN-to-internet traffic (one LPM miss) and on tunnel "
        "traffic in clear (LPM hit, atomic count, rate-limited event, drop)",
        "bytes_per_flow: memlock of the preallocated fp_flows4 hash (1M entries) from "
        "/proc/self/fdinfo / max_entries = htab_elem 48 + key 16 + value 48 + bucket 16; "
        "IPv6 flows (key 40) in their own map: bytes_per_flow_v6",
        "pin/release/teardown: median wall time of the user-space call (one bpf(2) read "
        "plus one write of the tunnel's control word); independent of the flow count",
        "calibration (each above the empty program): helper_call_ns = one kernel helper "
        "call+return; htab_lookup_ns = one hit in a preallocated hash, 16-byte key; "
        "lpm_lookup_ns = one LPM trie hit; htab_insert_new_key_ns = one insert of a new key "
        "into a preallocated 1M hash growing from empty (per-CPU counter in the key; "
        "taken beside the new flows, see new_flow_ns); on "
        "CPUs with the SRSO 'Safe RET' mitigation every kernel return is expensive, and a "
        "hash lookup and the clock read are such calls",
        "sweep_s_1m: batch read of 1M flows, decide, re-check + batch delete of the 100k "
        "expired, records built; sweep_s_1m_all_stale: same with all 1M removed",
    ]
    result["notes"] = notes
    return result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="flowpin bench datapath",
                                 description="measure the data path (prints one JSON object)")
    ap.add_argument("--json", action="store_true", help="accepted; output is always JSON")
    ap.add_argument("--repeat", type=int, default=1_000_000,
                    help="BPF_PROG_TEST_RUN repeat count (default 1000000)")
    ap.add_argument("--spread-packets", type=int, default=None,
                    help="packets per round of the spread hit figure, one test run each "
                    "(default 200000, or repeat/5 when smaller)")
    ap.add_argument("--spread-flows", type=int, default=SPREAD_FLOWS,
                    help="established flows the spread stream covers (default 1000000; "
                    "another count gets a table of its own, e.g. one bigger than the "
                    "last-level cache)")
    ap.add_argument("--no-conntrack", action="store_true",
                    help="leave out netfilter conntrack's cached/spread figures")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print(json.dumps({"error": "the data path benchmark needs root"}))
        return 1
    try:
        packets = a.spread_packets or max(1000, min(200_000, a.repeat // 5))
        out = run(a.repeat, packets, a.spread_flows, not a.no_conntrack)
        out["machine"] = machine()
    except Exception as exc:  # report, as JSON, what failed
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(out, indent=None if not sys.stdout.isatty() else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
