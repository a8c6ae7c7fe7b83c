"""Mixed traffic for the fault suite, run on lab nodes: a paced UDP stream, a new TCP
connection every 100 ms, IPv4 and IPv6, and crafted packets (ICMP, ND, an ACK scan).

``python -m lab.mixgen server|client|probe|icmp|ackscan ...`` is started inside
a node's namespace (``Lab.popen``); each prints one JSON line when it is done. The held TCP
transfers come from :mod:`lab.traffic`.

- ``server`` (ho-server): UDP sinks that read nothing (no ICMP port unreachable goes back)
  and a TCP server that answers every connection with ``ok`` and closes it.
- ``client`` (bo-client): ``--pps`` datagrams of ``--size`` bytes per second, paced on the
  clock and sent with ``sendmmsg(2)`` in batches over several sockets (flows) of both
  families; a new TCP connection every ``--connect-interval`` seconds, alternating the
  families. Runs until SIGTERM/SIGINT or ``--seconds``; prints what it sent, the rate it
  reached, and every connection attempt.
- ``probe``: one TCP connection per address; exit 0 when all answered.
- ``icmp``: crafted ICMP errors and ICMPv6 ND/MLD messages with LAN addresses, towards the
  far LAN (raw sockets; built here with struct, no packet library).
- ``ackscan``: TCP ACKs without SYN to many ports of one address, as a port scanner sends.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

from bench.loadgen import _IoVec, _libc, _MMsgHdr
from lab.packets import ip_checksum

TICK = 0.005  # pacing interval: 100 packets per tick at 20k pps


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.event.set())


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


# --- server --------------------------------------------------------------------------------
def server(udp_port: int, udp_flows: int, tcp_port: int, seconds: float) -> dict[str, Any]:
    stop = _Stop()
    sinks = []
    for i in range(udp_flows):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.bind(("::", udp_port + i))
        sinks.append(s)
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", tcp_port))
    srv.listen(256)
    srv.settimeout(0.5)
    print(json.dumps({"listening": tcp_port}), flush=True)
    accepted = 0
    deadline = time.monotonic() + seconds
    while not stop.event.is_set() and time.monotonic() < deadline:
        try:
            c, _ = srv.accept()
        except TimeoutError:
            continue
        except OSError:
            continue
        with contextlib.suppress(OSError):
            c.sendall(b"ok")
        c.close()
        accepted += 1
    return {"accepted": accepted}


# --- client --------------------------------------------------------------------------------
class UdpPacer:
    """``pps`` datagrams per second over ``sockets``, paced on the monotonic clock."""

    def __init__(self, targets: list[tuple[str, int]], pps: int, size: int,
                 batch: int = 256, sources: tuple[str, str] | None = None) -> None:
        self.pps, self.batch = pps, batch
        self.socks: list[socket.socket] = []
        for addr, port in targets:
            s = socket.socket(_family(addr), socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if sources:  # (IPv4, IPv6) source addresses
                s.bind((sources[1] if ":" in addr else sources[0], 0))
            s.connect((addr, port))
            self.socks.append(s)
        self._payload = ctypes.create_string_buffer(b"u" * size, size)
        self._iov = _IoVec(ctypes.cast(self._payload, ctypes.c_void_p), size)
        self._msgs = (_MMsgHdr * batch)()
        for m in self._msgs:
            m.msg_hdr.msg_iov = ctypes.pointer(self._iov)
            m.msg_hdr.msg_iovlen = 1
        self.sent = [0] * len(self.socks)
        self.errors = 0
        self.late_ticks = 0  # ticks where we were more than one tick behind the clock

    def run(self, stop: threading.Event, seconds: float) -> float:
        t0 = time.monotonic()
        end = t0 + seconds
        i = 0
        total = 0
        while not stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - t0) * self.pps) - total
            if due > self.pps * TICK * 2:
                self.late_ticks += 1
            while due > 0:
                n = min(due, self.batch)
                k = i % len(self.socks)
                i += 1
                r = _libc.sendmmsg(self.socks[k].fileno(), self._msgs, n, 0)
                if r < 0:  # ENOBUFS, ECONNREFUSED from an ICMP error: count, keep pacing
                    self.errors += 1
                    r = n  # the clock, not the error, decides what is due next
                else:
                    self.sent[k] += r
                total += r
                due -= r
            time.sleep(max(0.0, TICK - (time.monotonic() - now)))
        return time.monotonic() - t0


def _connect_once(addr: str, port: int, timeout: float) -> tuple[bool, float, str]:
    t = time.monotonic()
    try:
        with socket.socket(_family(addr), socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((addr, port))
            data = s.recv(2)
            return data == b"ok", time.monotonic() - t, ""
    except OSError as exc:
        return False, time.monotonic() - t, type(exc).__name__


def client(v4: str, v6: str, udp_port: int, udp_flows: int, pps: int, size: int,
           tcp_port: int, interval: float, seconds: float) -> dict[str, Any]:
    stop = _Stop()
    targets = [((v4, v6)[i % 2], udp_port + i) for i in range(udp_flows)]
    pacer = UdpPacer(targets, pps, size)
    attempts: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(addr: str, at: float) -> None:
        ok, took, err = _connect_once(addr, tcp_port, timeout=2.0)
        with lock:
            attempts.append({"t": round(at, 3), "to": addr, "ok": ok,
                             "ms": round(took * 1000, 1), "err": err})

    def connector() -> None:
        n = 0
        nxt = time.monotonic()
        while not stop.event.is_set():
            addr = (v4, v6)[n % 2]
            threading.Thread(target=one, args=(addr, time.time()), daemon=True).start()
            n += 1
            nxt += interval
            stop.event.wait(max(0.0, nxt - time.monotonic()))

    print(json.dumps({"started": time.time()}), flush=True)
    ct = threading.Thread(target=connector, daemon=True)
    ct.start()
    elapsed = pacer.run(stop.event, seconds)
    stop.event.set()
    ct.join()
    time.sleep(2.2)  # let the last attempts time out
    with lock:
        done = sorted(attempts, key=lambda a: a["t"])
    sent = sum(pacer.sent)
    return {"udp": {"sent": sent, "seconds": round(elapsed, 3),
                    "pps": round(sent / elapsed) if elapsed else 0, "target_pps": pps,
                    "size": size, "flows": len(targets), "errors": pacer.errors,
                    "late_ticks": pacer.late_ticks,
                    "per_flow": dict(zip([f"{a}/{p}" for a, p in targets], pacer.sent,
                                         strict=True))},
            "connects": {"ok": sum(a["ok"] for a in done),
                         "failed": sum(not a["ok"] for a in done), "attempts": done}}


def udp(v4: str, v6: str, src4: str, src6: str, port: int, pps: int, size: int,
        seconds: float) -> dict[str, Any]:
    """A paced UDP stream from given source addresses (one flow per family)."""
    stop = _Stop()
    pacer = UdpPacer([(v4, port), (v6, port + 1)], pps, size, batch=64, sources=(src4, src6))
    print(json.dumps({"started": time.time()}), flush=True)
    elapsed = pacer.run(stop.event, seconds)
    sent = sum(pacer.sent)
    return {"sent": sent, "seconds": round(elapsed, 3), "errors": pacer.errors,
            "pps": round(sent / elapsed) if elapsed else 0}


def probe(addrs: list[str], port: int, timeout: float) -> dict[str, Any]:
    res = {a: _connect_once(a, port, timeout) for a in addrs}
    return {"ok": all(r[0] for r in res.values()),
            "results": {a: {"ok": r[0], "ms": round(r[1] * 1000, 1), "err": r[2]}
                        for a, r in res.items()}}


# --- crafted packets ---------------------------------------------------------------------
def _ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, ttl, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", ip_checksum(hdr)) + hdr[12:] + payload


def _udp4(src: str, sport: int, dst: str, dport: int, data: bytes) -> bytes:
    body = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    pseudo = struct.pack("!4s4sBBH", socket.inet_aton(src), socket.inet_aton(dst), 0, 17,
                         len(body))
    return body[:6] + struct.pack("!H", ip_checksum(pseudo + body) or 0xFFFF) + body[8:]


def icmp_packets(src4: str, dst4: str, src6: str, dst6: str,
                 quoted4: tuple[str, str]) -> list[tuple[int, str, bytes]]:
    """(family, destination, bytes) of each crafted packet.

    IPv4: an ICMP destination-unreachable whose outer addresses are the two LANs and whose
    quoted packet is a UDP datagram between ``quoted4`` (a flow outside every tunnel), raw
    with IP_HDRINCL. IPv6: neighbour solicitation/advertisement, router solicitation and an
    MLDv2 report from a LAN address to the far LAN's, ICMPv6 only (the kernel adds the IPv6
    header and the checksum)."""
    qsrc, qdst = quoted4
    inner = _ipv4(qsrc, qdst, 17, _udp4(qsrc, 40000, qdst, 53, b"q" * 8))
    body = struct.pack("!BBHI", 3, 3, 0, 0) + inner
    icmp4 = body[:2] + struct.pack("!H", ip_checksum(body)) + body[4:]
    out: list[tuple[int, str, bytes]] = [(4, dst4, _ipv4(src4, dst4, 1, icmp4))]
    target = socket.inet_pton(socket.AF_INET6, dst6)
    out += [
        (6, dst6, struct.pack("!BBHI", 135, 0, 0, 0) + target),  # neighbour solicitation
        (6, dst6, struct.pack("!BBHI", 136, 0, 0, 0x60000000) + target),  # advertisement
        (6, dst6, struct.pack("!BBHI", 133, 0, 0, 0)),  # router solicitation
        (6, dst6, struct.pack("!BBHHH", 143, 0, 0, 0, 1)  # MLDv2 report, one record
         + struct.pack("!BBH16s", 4, 0, 0, socket.inet_pton(socket.AF_INET6, "ff02::1:3"))),
    ]
    return out


def icmp(src4: str, dst4: str, src6: str, dst6: str, quoted: str, rate: float,
         seconds: float) -> dict[str, Any]:
    stop = _Stop()
    r4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    r6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    r6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    r6.bind((src6, 0))
    pkts = icmp_packets(src4, dst4, src6, dst6, (quoted, src4))
    sent = errors = 0
    t0 = time.monotonic()
    print(json.dumps({"started": time.time()}), flush=True)
    while not stop.event.is_set() and time.monotonic() - t0 < seconds:
        for fam, dst, data in pkts:
            try:
                (r4 if fam == 4 else r6).sendto(data, (dst, 0))
                sent += 1
            except OSError:
                errors += 1
        stop.event.wait(len(pkts) / rate)
    return {"sent": sent, "errors": errors, "kinds": len(pkts)}


def tagged_frames(src_mac: bytes, dst_mac: bytes, src4: str, dst4: str, src6: str,
                  dst6: str, port: int, size: int) -> list[bytes]:
    """UDP in IPv4 and IPv6 behind two priority tags (802.1ad VID 0, then 802.1Q VID 0).

    Linux takes the outer tag off into the skb before TC ingress, so a program on the LAN
    sees a frame that still starts with an 802.1Q header; the stack then strips the inner
    priority tag and forwards the packet as if it had come untagged (no VLAN device, no
    8021q module needed)."""
    tags = struct.pack("!HHHH", 0x88A8, 0, 0x8100, 0)
    data = b"v" * size
    ip4 = _ipv4(src4, dst4, 17, _udp4(src4, 41000, dst4, port, data))
    s6, d6 = socket.inet_pton(socket.AF_INET6, src6), socket.inet_pton(socket.AF_INET6, dst6)
    udp6 = struct.pack("!HHHH", 41001, port + 1, 8 + len(data), 0) + data
    pseudo = s6 + d6 + struct.pack("!IxxxB", len(udp6), 17)
    udp6 = udp6[:6] + struct.pack("!H", ip_checksum(pseudo + udp6) or 0xFFFF) + udp6[8:]
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(udp6), 17, 64, s6, d6) + udp6
    return [dst_mac + src_mac + tags + struct.pack("!H", 0x0800) + ip4,
            dst_mac + src_mac + tags + struct.pack("!H", 0x86DD) + ip6]


def tagged(ifname: str, dst_mac: str, src4: str, dst4: str, src6: str, dst6: str, port: int,
           pps: int, seconds: float) -> dict[str, Any]:
    stop = _Stop()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    src_mac = s.getsockname()[4]
    frames = tagged_frames(src_mac, bytes.fromhex(dst_mac.replace(":", "")), src4, dst4,
                           src6, dst6, port, 100)
    sent = errors = 0
    t0 = time.monotonic()
    print(json.dumps({"started": time.time()}), flush=True)
    while not stop.event.is_set() and time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) * pps) - sent - errors
        for i in range(max(0, due)):
            try:
                s.send(frames[i % 2])
                sent += 1
            except OSError:
                errors += 1
        stop.event.wait(TICK)
    elapsed = time.monotonic() - t0
    return {"sent": sent, "errors": errors, "pps": round(sent / elapsed) if elapsed else 0}


def ackscan(src: str, dst: str, ports: int, first_port: int, rate: float) -> dict[str, Any]:
    """TCP ACKs (no SYN) from ``src`` to ``ports`` ports of ``dst``, as fast as ``rate``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    srcb, dstb = socket.inet_aton(src), socket.inet_aton(dst)
    sent = errors = 0
    t0 = time.monotonic()
    for i in range(ports):
        dport = first_port + i
        sport = 30000 + (i % 30000)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x10, 1024, 0, 0)
        pseudo = struct.pack("!4s4sBBH", srcb, dstb, 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", ip_checksum(pseudo + tcp)) + tcp[18:]
        try:
            s.sendto(tcp, (dst, 0))
            sent += 1
        except OSError:
            errors += 1
        ahead = (i + 1) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    return {"sent": sent, "errors": errors, "seconds": round(time.monotonic() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.mixgen")
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("server")
    sv.add_argument("--udp-port", type=int, default=9000)
    sv.add_argument("--udp-flows", type=int, default=4)
    sv.add_argument("--tcp-port", type=int, default=5400)
    sv.add_argument("--seconds", type=float, default=3600.0)
    cl = sub.add_parser("client")
    cl.add_argument("--v4", required=True)
    cl.add_argument("--v6", required=True)
    cl.add_argument("--udp-port", type=int, default=9000)
    cl.add_argument("--udp-flows", type=int, default=4)
    cl.add_argument("--pps", type=int, default=20000)
    cl.add_argument("--size", type=int, default=100, help="UDP payload bytes")
    cl.add_argument("--tcp-port", type=int, default=5400)
    cl.add_argument("--connect-interval", type=float, default=0.1)
    cl.add_argument("--seconds", type=float, default=600.0)
    ud = sub.add_parser("udp")
    ud.add_argument("--v4", required=True)
    ud.add_argument("--v6", required=True)
    ud.add_argument("--src4", required=True)
    ud.add_argument("--src6", required=True)
    ud.add_argument("--port", type=int, default=9000)
    ud.add_argument("--pps", type=int, default=2000)
    ud.add_argument("--size", type=int, default=100)
    ud.add_argument("--seconds", type=float, default=600.0)
    pr = sub.add_parser("probe")
    pr.add_argument("addrs", nargs="+")
    pr.add_argument("--port", type=int, default=5400)
    pr.add_argument("--timeout", type=float, default=3.0)
    ic = sub.add_parser("icmp")
    ic.add_argument("--src4", required=True)
    ic.add_argument("--dst4", required=True)
    ic.add_argument("--src6", required=True)
    ic.add_argument("--dst6", required=True)
    ic.add_argument("--quoted", required=True, help="peer of the tunnel-0 flow quoted")
    ic.add_argument("--rate", type=float, default=200.0, help="packets per second")
    ic.add_argument("--seconds", type=float, default=600.0)
    tg = sub.add_parser("tagged")
    tg.add_argument("--ifname", default="eth0")
    tg.add_argument("--dst-mac", required=True, help="the gateway's LAN MAC address")
    tg.add_argument("--src4", required=True)
    tg.add_argument("--dst4", required=True)
    tg.add_argument("--src6", required=True)
    tg.add_argument("--dst6", required=True)
    tg.add_argument("--port", type=int, default=9000)
    tg.add_argument("--pps", type=int, default=2000)
    tg.add_argument("--seconds", type=float, default=600.0)
    sc = sub.add_parser("ackscan")
    sc.add_argument("--src", required=True)
    sc.add_argument("--dst", required=True)
    sc.add_argument("--ports", type=int, default=5000)
    sc.add_argument("--first-port", type=int, default=1024)
    sc.add_argument("--rate", type=float, default=5000.0)
    a = p.parse_args(argv)
    if a.cmd == "server":
        res = server(a.udp_port, a.udp_flows, a.tcp_port, a.seconds)
    elif a.cmd == "client":
        res = client(a.v4, a.v6, a.udp_port, a.udp_flows, a.pps, a.size, a.tcp_port,
                     a.connect_interval, a.seconds)
    elif a.cmd == "udp":
        res = udp(a.v4, a.v6, a.src4, a.src6, a.port, a.pps, a.size, a.seconds)
    elif a.cmd == "tagged":
        res = tagged(a.ifname, a.dst_mac, a.src4, a.dst4, a.src6, a.dst6, a.port, a.pps,
                     a.seconds)
    elif a.cmd == "probe":
        res = probe(a.addrs, a.port, a.timeout)
    elif a.cmd == "icmp":
        res = icmp(a.src4, a.dst4, a.src6, a.dst6, a.quoted, a.rate, a.seconds)
    else:
        res = ackscan(a.src, a.dst, a.ports, a.first_port, a.rate)
    print(json.dumps(res), flush=True)
    return 0 if res.get("ok", True) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
