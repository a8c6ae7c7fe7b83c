"""What crosses the WAN: capture on a gateway's WAN interface and classify each packet.

tcpdump writes the capture (an independent witness: it is not flowpin looking at its own
work); this module reads the pcap and sorts packets into ESP (raw or UDP-encapsulated),
IKE, cleartext between the two LANs (a leak) and other.
"""

from __future__ import annotations

import ipaddress
import signal
import struct
import subprocess
import time
from collections import Counter
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
    """``with WanCapture(lab, gw) as cap: ...`` then ``cap.summary``."""

    def __init__(self, lab: Lab, gw: str = topology.BO_GW, path: Path | None = None) -> None:
        self.lab, self.gw = lab, gw
        self.path = path or (lab.state_dir / f"wan-{gw}-{time.monotonic_ns()}.pcap")
        self.proc: subprocess.Popen | None = None
        self.summary = WanSummary()

    def __enter__(self) -> WanCapture:
        self.proc = self.lab.popen(
            self.gw, ["tcpdump", "-i", topology.WAN_IF, "-n", "-U", "-s", "128", "-w",
                      str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump says "listening on" once the capture runs.
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpdump on {self.gw}: {line.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            time.sleep(0.2)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.summary = read_pcap(self.path)
