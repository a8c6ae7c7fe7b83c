"""Load generators of the forwarding benchmark, run inside the benchmark's namespaces.

``python -m bench.loadgen udp-flood|cps-server|cps-client ...``; each prints
one JSON line when it is done.

- ``udp-flood``: small UDP datagrams as fast as one process can send them, with
  ``sendmmsg(2)`` (through ctypes) in batches, so the per-packet cost is the kernel's, not
  Python's: iperf3 sends one datagram per system call and stops near 240 kpps here.
- ``cps-server``: accept connections and close them at once.
- ``cps-client``: connect, then close with SO_LINGER 0 (a RST, so the client keeps no
  TIME_WAIT and the ephemeral ports last); count connections completed in ``--seconds``.
  Every connection is a new SYN with a new or reopened 4-tuple: new for conntrack (a SYN
  on a closed entry makes conntrack delete it and start over) and for flowpin.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import os
import socket
import struct
import sys
import time
from typing import Any

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def udp_flood(to: str, port: int, seconds: float, size: int, batch: int,
              sport: int = 0) -> dict[str, Any]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if sport:
        s.bind(("0.0.0.0", sport))
    s.connect((to, port))
    payload = ctypes.create_string_buffer(b"x" * size, size)
    iov = _IoVec(ctypes.cast(payload, ctypes.c_void_p), size)
    msgs = (_MMsgHdr * batch)()
    for m in msgs:
        m.msg_hdr.msg_iov = ctypes.pointer(iov)
        m.msg_hdr.msg_iovlen = 1
    fd = s.fileno()
    sent = calls = 0
    t0 = time.monotonic()
    deadline = t0 + seconds
    while True:
        n = _libc.sendmmsg(fd, msgs, batch, 0)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED):
                continue  # a full queue, or an ICMP error reported back: keep sending
            raise OSError(err, os.strerror(err))
        sent += n
        calls += 1
        if calls % 16 == 0 and time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - t0
    s.close()
    return {"sent": sent, "seconds": round(elapsed, 4), "pps": round(sent / elapsed)}


def udp_sink(bind: str, port: int, seconds: float) -> dict[str, Any]:
    """A bound UDP socket that reads nothing: datagrams are dropped at the socket (no ICMP
    port unreachable goes back through the gateway)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.bind((bind, port))
    print(json.dumps({"listening": port}), flush=True)
    time.sleep(seconds)
    return {}


def cps_server(bind: str, port: int, seconds: float) -> dict[str, Any]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(4096)
    print(json.dumps({"listening": port}), flush=True)
    srv.settimeout(1.0)
    accepted = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            c, _ = srv.accept()
        except TimeoutError:
            continue
        c.close()
        accepted += 1
    return {"accepted": accepted}


_LINGER0 = struct.pack("ii", 1, 0)


def cps_client(to: str, port: int, seconds: float) -> dict[str, Any]:
    ok = failed = 0
    errors: dict[str, int] = {}  # errno name -> count: why connections failed
    addr = (to, port)
    t0 = time.monotonic()
    deadline = t0 + seconds
    sock, SOL, LINGER = socket.socket, socket.SOL_SOCKET, socket.SO_LINGER
    while True:
        for _ in range(32):
            s = sock(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(SOL, LINGER, _LINGER0)
            s.settimeout(2.0)
            try:
                s.connect(addr)
                ok += 1
            except OSError as exc:
                failed += 1
                name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                errors[name] = errors.get(name, 0) + 1
            s.close()
        if time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - t0
    return {"connections": ok, "failed": failed, "errors": errors,
            "seconds": round(elapsed, 4), "cps": round(ok / elapsed, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("udp-flood")
    f.add_argument("--to", required=True)
    f.add_argument("--port", type=int, default=9)
    f.add_argument("--seconds", type=float, default=3.0)
    f.add_argument("--size", type=int, default=18, help="UDP payload (18: 64-byte frames)")
    f.add_argument("--batch", type=int, default=256)
    f.add_argument("--sport", type=int, default=0)
    sk = sub.add_parser("udp-sink")
    sk.add_argument("--bind", default="0.0.0.0")
    sk.add_argument("--port", type=int, default=9)
    sk.add_argument("--seconds", type=float, default=600.0)
    sv = sub.add_parser("cps-server")
    sv.add_argument("--bind", default="0.0.0.0")
    sv.add_argument("--port", type=int, default=5300)
    sv.add_argument("--seconds", type=float, default=600.0)
    cl = sub.add_parser("cps-client")
    cl.add_argument("--to", required=True)
    cl.add_argument("--port", type=int, default=5300)
    cl.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)
    if a.cmd == "udp-flood":
        res = udp_flood(a.to, a.port, a.seconds, a.size, a.batch, a.sport)
    elif a.cmd == "udp-sink":
        res = udp_sink(a.bind, a.port, a.seconds)
    elif a.cmd == "cps-server":
        res = cps_server(a.bind, a.port, a.seconds)
    else:
        res = cps_client(a.to, a.port, a.seconds)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
