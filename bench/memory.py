"""``python -m bench.memory``: kernel memory per tracked flow, flowpin's flow
map vs netfilter conntrack, at 100k flows, from the kernel's own accounting.

- **flowpin**: a private data path whose ``fp_flows4`` hash holds exactly N entries, filled
  with N IPv4 flows (one batch update); bytes = the map's ``memlock`` in
  ``/proc/self/fdinfo/<fd>`` (the kernel's ``map_mem_usage``: preallocated elements, their
  per-CPU spares and the bucket array), divided by N.
- **conntrack**: a namespace ``fpbench-mem`` whose nftables output chain uses ``ct state``
  (so conntrack tracks there); N UDP datagrams to N distinct addresses routed over a veth
  to a gateway MAC that nobody owns (the peer drops them: no ICMP, no replies) make N
  conntrack entries
  (``nf_conntrack_count``). Bytes = growth of ``/proc/slabinfo`` (objects x object size)
  of the caches that grew by about one object per entry (``nf_conntrack`` itself and the
  kmalloc cache holding the extensions), divided by N, plus the conntrack hash table's
  buckets (``nf_conntrack_buckets`` x 8 bytes, allocated once) divided by N.

The namespace is removed at the end (and leftovers first); its conntrack entries go with it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import machine, print_result
from lab import netns

NS = "fpbench-mem"
FLOWS = 100_000
SINK_NET = "10.96.0.0/14"  # 262k addresses, routed to a gateway that drops them
NFT_TABLE = "fpbench_mem"


class MemoryBenchError(RuntimeError):
    pass


def slabinfo() -> dict[str, tuple[int, int, int]]:
    """{cache: (active objects, object size, bytes in slab pages)} from /proc/slabinfo."""
    out = {}
    with open("/proc/slabinfo") as fh:
        for line in fh.read().splitlines()[2:]:
            f = line.split()
            # name active num objsize objperslab pagesperslab : tunables ... : slabdata
            # active_slabs num_slabs sharedavail
            out[f[0]] = (int(f[1]), int(f[3]), int(f[14]) * int(f[5]) * 4096)
    return out


def flowpin_bytes_per_flow(n: int = FLOWS) -> dict[str, Any]:
    from bench.datapath import fill_flows, memlock_bytes
    from controlplane.datapath import Datapath, DatapathConfig

    dp = Datapath(DatapathConfig(instance="bench-mem", pin=False, flows4_max=n,
                                 flows6_max=1, tunnels_max=64, pickup_s=0)).load()
    try:
        t = dp.table
        now_s = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 10**9
        fill_flows(t, n, now_s, 0)
        count = t.read_raw(4).count
        if count != n:
            raise MemoryBenchError(f"flow map holds {count} flows, not {n}")
        mem = memlock_bytes(t.flows4.map_fd)
        return {"flows": count, "map_max_entries": t.flows4.max_entries, "memlock_bytes": mem,
                "bytes_per_flow": round(mem / count, 1)}
    finally:
        dp.close()


def _ct_setup(net: str) -> str:
    """In the namespace: ``net`` routed out of a veth to nowhere, conntrack used by nftables,
    unreplied UDP entries kept 10 minutes. Returns '' or an error."""
    import nftables

    from bench.common import route_to_nowhere

    route_to_nowhere(net, "fpmem")
    nft = nftables.Nftables()
    for cmd in (f"add table inet {NFT_TABLE}",
                f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0; }}",
                f"add rule inet {NFT_TABLE} out ct state new counter accept"):
        rc, _o, err = nft.cmd(cmd)
        if rc:
            return f"{cmd}: {err.strip()}"
    return ""


def _ct_fill(net: str, n: int) -> int:
    """In the namespace: one UDP datagram to each of ``n`` addresses of ``net``; returns
    nf_conntrack_count afterwards."""
    import ipaddress

    base = int(ipaddress.ip_network(net).network_address)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.95.0.1", 40000))
    payload = b"x"
    for i in range(n):
        s.sendto(payload, (str(ipaddress.IPv4Address(base + 1 + i)), 53))
    s.close()
    return int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())


def _ct_count() -> int:
    return int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())


def conntrack_bytes_per_flow(n: int = FLOWS) -> dict[str, Any]:
    from bench.topo import BenchLock

    with BenchLock():
        return _conntrack_bytes_per_flow(n)


def _conntrack_bytes_per_flow(n: int) -> dict[str, Any]:
    if netns.exists(NS):
        netns.kill_all(NS)
        netns.remove(NS)
    ct_max = int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
    if ct_max < n + 1000:
        raise MemoryBenchError(f"net.netfilter.nf_conntrack_max is {ct_max}: raise it above "
                               f"{n} to measure {n} conntrack entries")
    netns.create(NS)
    try:
        err = netns.call(NS, _ct_setup, SINK_NET)
        if err:
            raise MemoryBenchError(f"nftables: {err}")
        before = slabinfo()
        count = netns.call(NS, _ct_fill, SINK_NET, n, timeout=120)
        after = slabinfo()
        if count < n:
            raise MemoryBenchError(f"only {count} conntrack entries were created, not {n}")
        grew = {}
        for name, (objs, size, _pages) in after.items():
            d = objs - before.get(name, (0, size, 0))[0]
            if d >= n // 2:  # about one object per entry: attributable to the entries
                grew[name] = {"objects": d, "objsize": size, "bytes": d * size}
        if "nf_conntrack" not in grew:
            raise MemoryBenchError("the nf_conntrack slab cache did not grow: is "
                                   "/proc/slabinfo complete on this kernel?")
        buckets = int(Path("/proc/sys/net/netfilter/nf_conntrack_buckets").read_text())
        slab_bytes = sum(g["bytes"] for g in grew.values())
        hash_bytes = buckets * 8
        return {"entries": count, "slab_caches": grew, "nf_conn_objsize":
                after["nf_conntrack"][1], "slab_bytes_per_entry": round(slab_bytes / count, 1),
                "hash_buckets": buckets,
                "hash_bytes_per_entry": round(hash_bytes / count, 1),
                "bytes_per_flow": round((slab_bytes + hash_bytes) / count, 1)}
    finally:
        netns.kill_all(NS)
        netns.remove(NS)


def run(n: int = FLOWS) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise MemoryBenchError("the memory benchmark needs root")
    started = time.monotonic()
    fp = flowpin_bytes_per_flow(n)
    ct = conntrack_bytes_per_flow(n)
    return {
        "memory": {"flows": n, "flowpin_bytes_per_flow": fp["bytes_per_flow"],
                   "conntrack_bytes_per_flow": ct["bytes_per_flow"], "flowpin": fp,
                   "conntrack": ct},
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "notes": [
            "flowpin: memlock (kernel map_mem_usage) of a preallocated fp_flows4 hash sized "
            "to exactly N and holding N IPv4 flows; it is preallocated, so a bigger table "
            "costs its full size however many flows it holds (IPv6 flows: 40-byte keys)",
            "conntrack: /proc/slabinfo growth of the caches that grew by about one object "
            "per entry (nf_conn and its extension area) while N unreplied UDP entries were "
            "created, plus the hash bucket array (nf_conntrack_buckets x 8 B, global and "
            "allocated once) per entry; other kernel allocations per entry (none expected) "
            "and slab partial-page slack are not counted",
        ],
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory",
                                 description="kernel memory per tracked flow: flowpin vs "
                                 "conntrack (prints one JSON object)")
    ap.add_argument("--json", action="store_true", help="accepted; output is always JSON")
    ap.add_argument("--flows", type=int, default=FLOWS)
    a = ap.parse_args(argv)
    return print_result(lambda: run(a.flows))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
