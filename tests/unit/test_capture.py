"""WAN packet classification: crafted frames in, kind out."""

import socket
import struct

import pytest

from lab.capture import classify


def eth(ethertype: int, payload: bytes) -> bytes:
    return bytes(12) + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return eth(0x0800, hdr + l4)


def ipv6(src: str, dst: str, nh: int, l4: bytes) -> bytes:
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, 64,
                      socket.inet_pton(socket.AF_INET6, src),
                      socket.inet_pton(socket.AF_INET6, dst))
    return eth(0x86DD, hdr + l4)


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


CASES = [
    ("raw ESP between gateways", ipv4("192.0.2.1", "192.0.2.2", 50, bytes(40)), "esp"),
    ("UDP-encapsulated ESP", ipv4("192.0.2.1", "192.0.2.2", 17,
                                  udp(4500, 4500, b"\x12\x34\x56\x78" + bytes(40))),
     "esp-in-udp"),
    ("IKE on 4500 (non-ESP marker)", ipv4("192.0.2.1", "192.0.2.2", 17,
                                          udp(4500, 4500, bytes(4) + bytes(28))), "ike"),
    ("IKE on 500", ipv4("192.0.2.1", "192.0.2.2", 17, udp(500, 500, bytes(28))), "ike"),
    ("NAT-T keepalive", ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, b"\xff")),
     "keepalive"),
    ("cleartext LAN IPv4 TCP", ipv4("10.1.0.10", "10.2.0.10", 6, bytes(20)), "cleartext"),
    ("cleartext LAN IPv6", ipv6("fd01::10", "fd02::10", 58, bytes(8)), "cleartext"),
    ("WAN ICMP", ipv4("192.0.2.1", "192.0.2.2", 1, bytes(8)), "other"),
    ("truncated frame", b"\x00" * 10, "other"),
    ("ARP", eth(0x0806, bytes(28)), "other"),
]


@pytest.mark.parametrize(("frame", "kind"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(frame: bytes, kind: str) -> None:
    assert classify(frame)[0] == kind
