"""What crosses the WAN: capture what each gateway *sends* on its WAN and classify it.

tcpdump writes the capture (an independent witness: it is not flowpin looking at its own
work); this module reads the pcap and sorts packets into ESP (raw or UDP-encapsulated),
IKE, cleartext between the two LANs (a leak) and other.

Only what a gateway sends is captured (``tcpdump -Q out``), on every gateway: the WAN is
one link between the two, so everything on it was sent by one of them, once. Capturing both
directions on one gateway is wrong under strongSwan's kernel-netlink (XFRM) backend: there
a decrypted packet re-enters the stack on the WAN device it arrived on, and a capture of
the WAN's ingress sees it a second time, in clear -- a leak that never crossed the wire.
(Under kernel-libipsec the decrypted packet comes out of the TUN device ``ipsec0``, so the
mistake went unnoticed there.)
"""

from __future__ import annotations

import functools
import ipaddress
import re
import signal
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab import topology
from lab.lab import Lab

LAN_NETS = [ipaddress.ip_network(n) for n in topology.BO_LAN + topology.HO_LAN]


@dataclass
class WanSummary:
    counts: Counter = field(default_factory=Counter)
    leaks: list[str] = field(default_factory=list)  # one line per cleartext LAN packet

    @property
    def esp(self) -> int:
        return self.counts["esp"] + self.counts["esp-in-udp"]

    def as_dict(self) -> dict[str, object]:
        return {"counts": dict(self.counts), "esp": self.esp, "cleartext": len(self.leaks),
                "leaks": self.leaks[:20]}


@functools.lru_cache(maxsize=4096)
def _in_lan(addr: bytes) -> bool:
    # Cached: a capture of a 20k packets/s run holds millions of packets but few addresses.
    ip = ipaddress.ip_address(addr)
    return any(ip in n for n in LAN_NETS)


@functools.lru_cache(maxsize=4096)
def _addr(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def classify(frame: bytes) -> tuple[str, str]:
    """(kind, description) of one Ethernet frame seen on the WAN."""
    if len(frame) < 14:
        return "other", ""
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    pkt = frame[14:]
    if ethertype == 0x0800 and len(pkt) >= 20:
        ihl = (pkt[0] & 0x0F) * 4
        proto, src, dst = pkt[9], pkt[12:16], pkt[16:20]
        l4 = pkt[ihl:]
    elif ethertype == 0x86DD and len(pkt) >= 40:
        proto, src, dst = pkt[6], pkt[8:24], pkt[24:40]
        l4 = pkt[40:]
    else:
        return "other", ""
    desc = f"{_addr(src)} > {_addr(dst)} proto {proto}"
    if _in_lan(src) or _in_lan(dst):
        # Ports and ICMP types say whose packet leaked (the fault suite attributes them).
        if proto in (6, 17) and len(l4) >= 4:
            desc += " ports {} > {}".format(*struct.unpack_from("!HH", l4))
        elif proto in (1, 58) and l4:
            desc += f" type {l4[0]}"
        return "cleartext", desc
    if proto == 50:
        return "esp", desc
    if proto == 17 and len(l4) >= 8:
        sport, dport = struct.unpack_from("!HH", l4)
        if 4500 in (sport, dport):
            # RFC 3948: a zero "non-ESP marker" means IKE, anything else is ESP.
            if len(l4) >= 12 and l4[8:12] == b"\0\0\0\0":
                return "ike", desc
            return ("esp-in-udp" if len(l4) > 9 else "keepalive"), desc
        if 500 in (sport, dport):
            return "ike", desc
    return "other", desc


def read_pcap(path: Path) -> WanSummary:
    out = WanSummary()
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return out
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off = 24
    while off + 16 <= len(data):
        _ts, _us, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        frame = data[off + 16: off + 16 + incl]
        off += 16 + incl
        kind, desc = classify(frame)
        out.counts[kind] += 1
        if kind == "cleartext":
            out.leaks.append(desc)
    return out


_DROPPED = re.compile(r"(\d+) packets? dropped by kernel")
_CAPTURED = re.compile(r"(\d+) packets? captured")


class GatewayCapture:
    """``with GatewayCapture(lab, gw) as cap: ...`` then ``cap.summary``: what one gateway
    sends on its WAN.

    ``direction="out"`` (the default) captures only what the gateway sends (tcpdump ``-Q
    out``): under XFRM, decrypted packets re-enter the stack on the WAN device and would
    look like leaks in a capture of both directions. ``buffer_kib`` enlarges the kernel
    buffer for fast streams; after the block ``dropped`` holds what tcpdump reports as
    "dropped by kernel" (a witness that dropped packets cannot vouch for them: callers
    must check it).
    """

    def __init__(self, lab: Lab, gw: str = topology.BO_GW, path: Path | None = None, *,
                 direction: str | None = "out", snaplen: int = 128,
                 buffer_kib: int | None = None) -> None:
        if direction not in (None, "in", "out", "inout"):
            raise ValueError(f"direction {direction!r}: in, out or inout")
        self.lab, self.gw = lab, gw
        stamp = time.monotonic_ns()
        self.path = path or (lab.state_dir / f"wan-{gw}-{direction or 'inout'}-{stamp}.pcap")
        self.direction, self.snaplen, self.buffer_kib = direction, snaplen, buffer_kib
        self.proc: subprocess.Popen | None = None
        self.summary = WanSummary()
        self.dropped: int | None = None  # None: tcpdump did not say
        self.captured: int | None = None

    def argv(self) -> list[str]:
        argv = ["tcpdump", "-i", topology.WAN_IF, "-n", "-s", str(self.snaplen)]
        if self.direction:
            argv += ["-Q", self.direction]
        if self.buffer_kib:
            # Large buffer, no per-packet flush (-U): at tens of thousands of packets/s a
            # write per packet is what makes tcpdump fall behind and the kernel drop.
            argv += ["-B", str(self.buffer_kib)]
        else:
            # --immediate-mode: without it libpcap takes packets from the kernel a ring
            # block at a time, and what sits in a block not yet handed over when tcpdump is
            # stopped is never written -- the last packets of a capture, perhaps the leak.
            argv += ["--immediate-mode", "-U"]
        return argv + ["-w", str(self.path)]

    def start(self) -> None:
        self.proc = self.lab.popen(self.gw, self.argv(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump says "listening on" once the capture runs.
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"tcpdump on {self.gw}: {line.strip()}")

    def stop(self) -> None:
        if self.proc:
            # Buffered, libpcap hands packets over in blocks at the latest after its 1 s
            # timeout, and a block not yet handed over when tcpdump stops is lost.
            time.sleep(1.2 if self.buffer_kib else 0.2)
            self.proc.send_signal(signal.SIGINT)
            try:
                _out, err = self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _out, err = self.proc.communicate()
            text = err.decode(errors="replace") if err else ""
            m = _DROPPED.search(text)
            self.dropped = int(m.group(1)) if m else None
            m = _CAPTURED.search(text)
            self.captured = int(m.group(1)) if m else None
            self.proc = None
        self.summary = read_pcap(self.path)

    def __enter__(self) -> GatewayCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WanCapture:
    """``with WanCapture(lab) as cap: ...`` then ``cap.summary`` (everything the gateways
    sent on the WAN) and ``cap.by_sender`` (the same, per gateway): one
    :class:`GatewayCapture` of what each gateway sends."""

    def __init__(self, lab: Lab, senders: Sequence[str] = topology.GATEWAYS,
                 **options: object) -> None:
        self.lab = lab
        self.senders = tuple(senders)
        self.parts = {gw: GatewayCapture(lab, gw, **options)  # type: ignore[arg-type]
                      for gw in self.senders}
        self.summary = WanSummary()
        self.by_sender: dict[str, WanSummary] = {}

    def __enter__(self) -> WanCapture:
        started = []
        try:
            for part in self.parts.values():
                part.start()
                started.append(part)
        except BaseException:
            for part in started:
                part.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for part in self.parts.values():
            part.stop()
        self.by_sender = {gw: part.summary for gw, part in self.parts.items()}
        self.summary = WanSummary()
        for part in self.by_sender.values():
            self.summary.counts.update(part.counts)
            self.summary.leaks += part.leaks
