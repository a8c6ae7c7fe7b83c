"""Netfilter conntrack's per-packet cost on one flow and on a stream spread over 1M entries.

The counterpart of the data path's ``established_spread`` for the firewall flowpin sits
beside. Conntrack has no test-run harness, so it is measured on a real packet path: a
namespace of its own (``fpbench-ct``, under the benchmarks' lock) whose nftables output
chain uses conntrack (``ct state new counter accept``, as in the memory benchmark) holds N
unreplied UDP entries (one datagram to each of N addresses routed out of a veth to a
gateway MAC nobody owns: the peer drops the frames, nothing comes back). One process
then sends datagrams on the same tuples with ``sendmmsg(2)``, timed by its own CPU clock
(CLOCK_THREAD_CPUTIME_ID: the send path, conntrack and the veth run in its context; time
the scheduler gives to others is not counted):

- **cached**: every datagram to the same address, so its entry stays in cache;
- **spread**: every datagram to a different entry, drawn at random and never twice (as the
  data path's spread stream), the last-level cache evicted before the stream;

each with conntrack on (the table with its rule) and off (the table deleted: no conntrack
hook in the namespace, the entries untouched), alternating. Conntrack's cost is on - off,
per stream (the median over rounds of the within-round differences), and its miss
penalty the spread figure minus the cached one (so what a different destination costs the
rest of the send path, paid with conntrack off too, is not counted). Everything a packet
pays to conntrack and the one-rule chain is inside (its hooks, the hash lookup, the entry's
refcount and timeout update); it is not the test-run harness of the data path's figures,
so compare the two by what each adds per packet, not by the totals.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import random
import socket
import statistics
import struct
import time
from pathlib import Path
from typing import Any

from bench.common import NOWHERE_SRC, route_to_nowhere
from bench.loadgen import _IoVec, _libc, _MMsgHdr
from lab import netns

NS = "fpbench-ct"  # a benchmark namespace: created and removed under bench.topo.BenchLock
NET = "10.64.0.0/10"  # 4M addresses, routed to a gateway that drops them
SRC = NOWHERE_SRC
SPORT, DPORT = 40000, 53
NFT_TABLE = "fpbench_ct"
BATCH = 1024
_PROC = Path("/proc/sys/net/netfilter")
_MMSG = struct.Struct("<QI4xQQQQi4xI4x")  # struct mmsghdr, x86_64


def _setup() -> None:
    """In the namespace: NET routed out of a veth to nowhere; unreplied UDP entries kept
    10 minutes (longer than the benchmark)."""
    route_to_nowhere(NET, "fpct")

def _nft(*cmds: str) -> Any:
    import nftables

    nft = nftables.Nftables()
    nft.set_json_output(True)
    out = None
    for cmd in cmds:
        rc, out, err = nft.cmd(cmd)
        if rc:
            raise RuntimeError(f"nftables: {cmd}: {err.strip()}")
    return out


def _ct_on() -> None:
    _nft(f"add table inet {NFT_TABLE}",
         f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0; }}",
         f"add rule inet {NFT_TABLE} out ct state new counter accept")


def _ct_off() -> int:
    """Delete the table (conntrack's hooks go with it); returns what its rule counted."""
    import json

    out = json.loads(_nft(f"list table inet {NFT_TABLE}"))
    packets = sum(e["counter"]["packets"] for item in out["nftables"] if "rule" in item
                  for e in item["rule"]["expr"] if "counter" in e)
    _nft(f"delete table inet {NFT_TABLE}")
    return packets


def _count() -> int:
    return int((_PROC / "nf_conntrack_count").read_text())


class _Stream:
    """``len(dsts)`` datagrams, one to each address of ``dsts`` in order, as mmsghdr
    batches ready for sendmmsg (built once, so both conditions send the same bytes)."""

    def __init__(self, dsts: list[int]) -> None:
        n = len(dsts)
        self.n = n
        self.payload = ctypes.create_string_buffer(b"x", 1)
        self.iov = _IoVec(ctypes.cast(self.payload, ctypes.c_void_p).value, 1)
        names = bytearray(16 * n)
        for i, d in enumerate(dsts):
            struct.pack_into("<H2sI8x", names, 16 * i, socket.AF_INET,
                             DPORT.to_bytes(2, "big"), socket.htonl(d))
        self.names = (ctypes.c_char * len(names)).from_buffer(names)
        base = ctypes.addressof(self.names)
        iov = ctypes.addressof(self.iov)
        msgs = bytearray(ctypes.sizeof(_MMsgHdr) * n)
        for i in range(n):
            _MMSG.pack_into(msgs, 64 * i, base + 16 * i, 16, iov, 1, 0, 0, 0, 0)
        self.msgs = (ctypes.c_char * len(msgs)).from_buffer(msgs)

    def send(self, fd: int) -> int:
        """Send the stream; returns the CPU ns this thread spent doing it."""
        base = ctypes.addressof(self.msgs)
        t0 = time.thread_time_ns()
        off = 0
        while off < self.n:
            k = _libc.sendmmsg(fd, ctypes.c_void_p(base + 64 * off), min(BATCH, self.n - off),
                               0)
            if k < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOBUFS, errno.EAGAIN):
                    continue  # the device queue was full for a moment: send the rest
                raise OSError(err, os.strerror(err))
            off += k
        return time.thread_time_ns() - t0


def _measure(flows: int, packets: int, rounds: int, evict_bytes: int, seed: int) -> dict:
    """In the namespace: fill ``flows`` entries, then the rounds (see the module)."""
    assert ctypes.sizeof(_MMsgHdr) == 64
    _setup()
    base = int(ipaddress.ip_network(NET).network_address) + 1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((SRC, SPORT))
    fd = s.fileno()
    _ct_on()
    _Stream([base + i for i in range(flows)]).send(fd)
    filled = _count()
    _ct_off()
    if filled < flows:
        raise RuntimeError(f"only {filled} conntrack entries were created, not {flows}")
    rng = random.Random(seed)
    chosen = rng.sample(range(1, flows), packets * rounds)  # entry 0 is the cached one
    cached = _Stream([base] * packets)
    evict = ctypes.create_string_buffer(evict_bytes)
    ns: dict[str, list[float]] = {f"{c}_{s}": [] for c in ("on", "off")
                                  for s in ("cached", "spread")}
    counted = 0
    for r in range(rounds):
        spread = _Stream([base + i for i in chosen[r * packets:(r + 1) * packets]])
        for cond in (("on", "off") if r % 2 == 0 else ("off", "on")):
            if cond == "on":
                _ct_on()
            for name, stream in (("cached", cached), ("spread", spread)):
                ctypes.memset(evict, r + 1, evict_bytes)
                ns[f"{cond}_{name}"].append(round(stream.send(fd) / stream.n, 1))
            if cond == "on":
                counted += _ct_off()
    s.close()
    after = _count()
    if after != filled:
        raise RuntimeError(f"conntrack holds {after} entries after the streams, not {filled}: "
                           "the streams did not hit the filled entries")
    if counted != 2 * packets * rounds:
        raise RuntimeError(f"conntrack's rule saw {counted} packets, not {2 * packets * rounds}")
    return {"entries": filled, "ns": ns}


def run(flows: int, packets: int, rounds: int, evict_bytes: int,
        seed: int = 1) -> dict[str, Any]:
    """The conntrack figures (see the module); raises the global conntrack limit and hash
    size for the run when they are below ``flows`` (restored afterwards)."""
    packets = min(packets, (flows - 1) // rounds)
    need = {"nf_conntrack_max": flows + 10_000,
            "nf_conntrack_buckets": 1 << max(flows - 1, 1).bit_length()}
    from bench.topo import BenchLock

    with BenchLock():
        return _run_locked(flows, packets, rounds, evict_bytes, seed, need)


def _run_locked(flows: int, packets: int, rounds: int, evict_bytes: int, seed: int,
                need: dict[str, int]) -> dict[str, Any]:
    saved: dict[str, str] = {}
    if netns.exists(NS):  # a leftover of a killed run (the lock is ours)
        netns.kill_all(NS)
        netns.remove(NS)
    try:
        for k, v in need.items():
            cur = (_PROC / k).read_text().strip()
            if int(cur) < v:
                saved[k] = cur
                (_PROC / k).write_text(str(v))
        buckets = int((_PROC / "nf_conntrack_buckets").read_text())
        netns.create(NS)
        try:
            got = netns.call(NS, _measure, flows, packets, rounds, evict_bytes, seed,
                             timeout=600)
        finally:
            netns.kill_all(NS)
            netns.remove(NS)
    finally:
        for k, v in saved.items():
            (_PROC / k).write_text(v)
    m = {k: round(statistics.median(v), 1) for k, v in got["ns"].items()}
    r = got["ns"]

    def med_diff(a: str, b: str) -> float:
        return round(statistics.median(x - y for x, y in zip(r[a], r[b], strict=True)), 1)

    added = {"cached": med_diff("on_cached", "off_cached"),
             "spread": med_diff("on_spread", "off_spread")}
    return {
        "entries": got["entries"], "hash_buckets": buckets, "packets_per_round": packets,
        "rounds": rounds, "order": "random, each entry at most once",
        "path_ns": m,  # whole send path per datagram, conntrack on/off, cached/spread
        "conntrack_ns": added,
        "miss_penalty_ns": round(added["spread"] - added["cached"], 1),
        "raised_for_run": {k: need[k] for k in saved},
        "per_round": r,
    }
