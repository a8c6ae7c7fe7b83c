"""The witness itself: it must see a leak when there is one, see only what a gateway sends,
and say when it dropped packets. Without this, 0 cleartext could mean a blind witness."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest

from lab import netns, topology
from lab.capture import _DROPPED, GatewayCapture, classify
from lab.lab import Lab
from lab.mixgen import icmp_packets
from lab.packets import ip_checksum


def _frame(src: str, dst: str, payload: bytes = b"leak") -> bytes:
    udp = struct.pack("!HHHH", 40000, 7, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + ip + udp


def test_capture_is_egress_only_with_a_big_buffer() -> None:
    cap = GatewayCapture(Lab("x"), "bo-gw", direction="out", snaplen=96, buffer_kib=65536)
    argv = cap.argv()
    assert argv[argv.index("-Q") + 1] == "out"
    assert argv[argv.index("-B") + 1] == "65536"
    assert "-U" not in argv  # a flush per packet is what makes tcpdump fall behind


@pytest.mark.parametrize(("stderr", "dropped"), [
    ("1000 packets captured\n1000 packets received by filter\n0 packets dropped by kernel\n",
     0),
    ("5 packets captured\n9 packets received by filter\n1 packet dropped by kernel\n", 1),
])
def test_drop_count_is_read_from_tcpdump(stderr: str, dropped: int) -> None:
    m = _DROPPED.search(stderr)
    assert m and int(m.group(1)) == dropped


def test_crafted_packets_are_well_formed_and_counted_as_cleartext() -> None:
    pkts = icmp_packets("10.1.0.10", "10.2.0.10", "fd01::10", "fd02::10",
                        ("192.0.2.1", "10.1.0.10"))
    fam, _dst, v4 = pkts[0]
    assert fam == 4 and ip_checksum(v4[:20]) == 0 and ip_checksum(v4[20:]) == 0  # checksums verify
    assert v4[20] == 3 and v4[20 + 8 + 12: 20 + 8 + 16] == socket.inet_aton("192.0.2.1")
    assert [p[2][0] for p in pkts[1:]] == [135, 136, 133, 143]
    assert classify(b"\0" * 12 + b"\x08\x00" + v4)[0] == "cleartext"


@pytest.mark.lab
def test_witness_sees_a_leak_and_only_what_the_gateway_sends(
        fault_lab: dict[str, Any]) -> None:
    """A cleartext frame sent by bo-gw on its WAN is counted; the same frame *received*
    by bo-gw (sent by ho-gw) is not in bo-gw's egress capture. The frames carry a LAN
    address but are no tunnel's (198.51.100.9 is in no selector): the WAN guard would drop
    a frame of the tunnel's own selectors before any capture could see it."""
    lab: Lab = fault_lab["lab"]

    def send(frames: list[bytes]) -> int:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((topology.WAN_IF, 0))
        for f in frames:
            s.send(f)
        s.close()
        return len(frames)

    with GatewayCapture(lab, "bo-gw", direction="out", snaplen=96, buffer_kib=4096) as cap:
        netns.call(lab.ns("bo-gw"), send, [_frame("10.1.0.10", "198.51.100.9")] * 3)
        netns.call(lab.ns("ho-gw"), send, [_frame("198.51.100.9", "10.1.0.10")] * 5)
        time.sleep(0.5)
    assert len(cap.summary.leaks) == 3, cap.summary.as_dict()
    assert all(x.startswith("10.1.0.10 > 198.51.100.9") for x in cap.summary.leaks)
    assert cap.dropped == 0


def test_tagged_frames_carry_two_priority_tags() -> None:
    from lab.mixgen import tagged_frames

    frames = tagged_frames(b"\x02" * 6, b"\x04" * 6, "10.1.0.10", "10.2.0.10", "fd01::10",
                           "fd02::10", 9000, 100)
    for frame, inner in zip(frames, (0x0800, 0x86DD), strict=True):
        assert struct.unpack_from("!HHHHH", frame, 12) == (0x88A8, 0, 0x8100, 0, inner)
    v4 = frames[0][22:]
    assert ip_checksum(v4[:20]) == 0 and v4[12:16] == socket.inet_aton("10.1.0.10")


def test_a_leak_says_whose_packet_it_was() -> None:
    kind, desc = classify(_frame("10.1.0.10", "10.2.0.10"))
    assert kind == "cleartext" and desc == "10.1.0.10 > 10.2.0.10 proto 17 ports 40000 > 7"
