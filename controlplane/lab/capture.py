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

import ipaddress
import signal
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.lab import topology
from controlplane.lab.lab import Lab

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


def _in_lan(addr: bytes) -> bool:
    ip = ipaddress.ip_address(addr)
    return any(ip in n for n in LAN_NETS)


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
    desc = f"{ipaddress.ip_address(src)} > {ipaddress.ip_address(dst)} proto {proto}"
    if _in_lan(src) or _in_lan(dst):
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


class WanCapture:
    """``with WanCapture(lab) as cap: ...`` then ``cap.summary`` (everything the gateways
    sent on the WAN) and ``cap.by_sender`` (the same, per gateway)."""

    def __init__(self, lab: Lab, senders: Sequence[str] = topology.GATEWAYS) -> None:
        self.lab = lab
        self.senders = tuple(senders)
        stamp = time.monotonic_ns()
        self.paths = {gw: lab.state_dir / f"wan-{gw}-out-{stamp}.pcap" for gw in self.senders}
        self.procs: dict[str, subprocess.Popen] = {}
        self.summary = WanSummary()
        self.by_sender: dict[str, WanSummary] = {}

    def __enter__(self) -> WanCapture:
        try:
            for gw in self.senders:
                self.procs[gw] = self._start(gw)
        except BaseException:
            self._stop()
            raise
        return self

    def _start(self, gw: str) -> subprocess.Popen:
        proc = self.lab.popen(
            gw, ["tcpdump", "-i", topology.WAN_IF, "-Q", "out", "--immediate-mode", "-n",
                 "-U", "-s", "128", "-w", str(self.paths[gw])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # --immediate-mode: without it libpcap takes packets from the kernel a ring block
        # at a time, and what sits in a block not yet handed over when tcpdump is stopped
        # is never written -- the last packets of a capture, perhaps the leak.
        # tcpdump says "listening on" once the capture runs.
        assert proc.stderr is not None
        line = proc.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"tcpdump on {gw}: {line.strip()}")
        return proc

    def _stop(self) -> None:
        if self.procs:
            time.sleep(0.2)
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __exit__(self, *exc: object) -> None:
        self._stop()
        self.by_sender = {gw: read_pcap(path) for gw, path in self.paths.items()}
        self.summary = WanSummary()
        for part in self.by_sender.values():
            self.summary.counts.update(part.counts)
            self.summary.leaks += part.leaks
