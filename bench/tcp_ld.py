"""``flowpin bench tcp-ld --json``: does an ICMP unreachable per dropped segment shorten a
Linux sender's wait after an outage (RFC 6069, TCP-LD), for IPv4 and IPv6?

No flowpin and no charon: three namespaces (client -- router -- server), a paced TCP
transfer from client to server, and an "outage" made by an nftables rule on the router's
forward hook for S seconds. The variants differ only in what the router does with the
client's segments during the outage:

- ``drop``: silently (what a held flow sees today);
- ``reject-host``: IPv4 ``reject with icmp host-unreachable`` (type 3 code 1);
- ``reject-addr``: IPv6 ``reject with icmpv6 addr-unreachable`` (type 1 code 3);
- ``reject-noroute``: IPv6 ``reject with icmpv6 no-route`` (type 1 code 0).

The server's segments (the ACKs) are dropped silently in every variant. The figure is the
time from the rule's removal to the first byte after the gap at the server (one clock: all
namespaces share CLOCK_MONOTONIC). Linux reverts one RTO backoff per ICMP that quotes the
head of its retransmission queue: tcp_v4_err for codes net/host unreachable, tcp_v6_err
only for ICMPV6_DEST_UNREACH code ICMPV6_NOROUTE (0).

This is a bench tool: it uses ip(8) and nft(8) to build its throwaway topology.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import machine

# Addresses of the throwaway topology (documentation/ULA ranges, inside its namespaces only).
NET = {
    4: {"c": "192.0.2.2", "rc": "192.0.2.1", "s": "198.51.100.2", "rs": "198.51.100.1",
        "plen": 24},
    6: {"c": "fd5a::2", "rc": "fd5a::1", "s": "fd5b::2", "rs": "fd5b::1", "plen": 64},
}
VARIANTS = {4: ("drop", "reject-host"), 6: ("drop", "reject-addr", "reject-noroute")}
REJECT = {"reject-host": "reject with icmp type host-unreachable",
          "reject-addr": "reject with icmpv6 type addr-unreachable",
          "reject-noroute": "reject with icmpv6 type no-route"}

SERVER = r"""
import json, socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(float(sys.argv[3]))
last, gaps, total = time.monotonic(), [], 0
while True:
    try:
        d = c.recv(65536)
    except OSError:
        break
    now = time.monotonic()
    if not d:
        break
    if now - last > 0.3:
        gaps.append((last, now))
    last = now
    total += len(d)
print(json.dumps({"gaps": gaps, "bytes": total}), flush=True)
"""

CLIENT = r"""
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
chunk, rate, end = b"x" * 1000, 50_000, time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.send(chunk)
    time.sleep(len(chunk) / rate)
"""


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _ns(ns: str, *cmd: str) -> None:
    _run("ip", "netns", "exec", ns, *cmd)


class Topo:
    """client -- router -- server, both families, torn down by close()."""

    def __init__(self) -> None:
        tag = f"ld{os.getpid()}"
        self.c, self.r, self.s = f"{tag}c", f"{tag}r", f"{tag}s"
        for ns in (self.c, self.r, self.s):
            _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", "c0", "netns", self.c, "type", "veth", "peer", "rc0",
             "netns", self.r)
        _run("ip", "link", "add", "s0", "netns", self.s, "type", "veth", "peer", "rs0",
             "netns", self.r)
        for fam, a in NET.items():
            _ns(self.c, "ip", f"-{fam}", "addr", "add", f"{a['c']}/{a['plen']}", "dev", "c0",
                *(["nodad"] if fam == 6 else []))
            _ns(self.r, "ip", f"-{fam}", "addr", "add", f"{a['rc']}/{a['plen']}", "dev", "rc0",
                *(["nodad"] if fam == 6 else []))
            _ns(self.r, "ip", f"-{fam}", "addr", "add", f"{a['rs']}/{a['plen']}", "dev", "rs0",
                *(["nodad"] if fam == 6 else []))
            _ns(self.s, "ip", f"-{fam}", "addr", "add", f"{a['s']}/{a['plen']}", "dev", "s0",
                *(["nodad"] if fam == 6 else []))
        for ns, dev in ((self.c, "c0"), (self.s, "s0")):
            _ns(ns, "ip", "link", "set", "lo", "up")
            _ns(ns, "ip", "link", "set", dev, "up")
        for dev in ("rc0", "rs0", "lo"):
            _ns(self.r, "ip", "link", "set", dev, "up")
        _ns(self.r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _ns(self.r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        # the kernel's own ICMP rate limit would thin the router's rejects out
        _ns(self.r, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        _ns(self.r, "sysctl", "-qw", "net.ipv6.icmp.ratelimit=0")
        for fam, a in NET.items():
            _ns(self.c, "ip", f"-{fam}", "route", "add", "default", "via", a["rc"])
            _ns(self.s, "ip", f"-{fam}", "route", "add", "default", "via", a["rs"])

    def outage(self, variant: str, family: int) -> None:
        verdict = "drop" if variant == "drop" else REJECT[variant]
        nfproto = "ipv4" if family == 4 else "ipv6"
        _ns(self.r, "nft", "add table inet ldprobe")
        _ns(self.r, "nft", "add chain inet ldprobe outage "
                           "{ type filter hook forward priority 0; }")
        _ns(self.r, "nft", f"add rule inet ldprobe outage iifname rc0 meta nfproto {nfproto} "
                           f"tcp dport 5999 {verdict}")
        _ns(self.r, "nft", "add rule inet ldprobe outage iifname rs0 tcp sport 5999 drop")

    def restore(self) -> None:
        _ns(self.r, "nft", "delete", "table", "inet", "ldprobe")

    def close(self) -> None:
        for ns in (self.c, self.r, self.s):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def measure(topo: Topo, family: int, variant: str, outage: float) -> dict[str, Any]:
    a = NET[family]
    total = 3.0 + outage + 40.0
    server = subprocess.Popen(["ip", "netns", "exec", topo.s, sys.executable, "-c", SERVER,
                               a["s"], "5999", str(total + 60)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        client = subprocess.Popen(["ip", "netns", "exec", topo.c, sys.executable, "-c", CLIENT,
                                   a["s"], "5999", str(total)])
        time.sleep(3.0)
        topo.outage(variant, family)
        time.sleep(outage)
        topo.restore()
        back = time.monotonic()
        client.wait(timeout=total + 30)
        out = json.loads(server.communicate(timeout=60)[0].strip().splitlines()[-1])
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    after = [g for g in out["gaps"] if g[1] >= back]
    return {"resume_ms": round((after[0][1] - back) * 1000) if after else None}


def table(path: str) -> str:
    """The docs' table (markdown) from a result file of this probe."""
    with open(path) as fh:
        res = json.load(fh)["resume_ms"]
    rows = ["| family | outage | silent drop | ICMP per dropped segment |", "|---|---|---|---|"]
    for fam, outs in res.items():
        for s, r in outs.items():
            icmp = ", ".join(f"{v}: {r[v] / 1000:.2f} s" for v in r if v != "drop")
            rows.append(f"| {fam} | {s} s | {r['drop'] / 1000:.2f} s | {icmp} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--table"]:
        print(table(argv[1]))
        return 0
    p = argparse.ArgumentParser(prog="flowpin bench tcp-ld")
    p.add_argument("--json", action="store_true", help="one JSON line (default: indented)")
    p.add_argument("--outages", default="20", help="seconds, comma-separated")
    p.add_argument("--families", default="4,6")
    a = p.parse_args(argv)
    outages = [float(x) for x in a.outages.split(",") if x.strip()]
    topo = Topo()
    res: dict[str, Any] = {}
    try:
        for fam in (int(f) for f in a.families.split(",")):
            for s in outages:
                for v in VARIANTS[fam]:
                    r = measure(topo, fam, v, s)
                    res.setdefault(f"ipv{fam}", {}).setdefault(f"{s:g}", {})[v] = r["resume_ms"]
                    print(f"ipv{fam} outage {s:g} s {v}: {r}", file=sys.stderr, flush=True)
    finally:
        topo.close()
    print(json.dumps({"resume_ms": res, "kernel": os.uname().release, "machine": machine()},
                     indent=None if a.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
