"""The test rig's packet builder: Ethernet frames (IPv4/IPv6, TCP/UDP/ICMP/ICMPv6) made field
by field, with knobs for the malformed shapes the data path must survive: truncation, bad IHL,
IPv6 extension headers, fragments, a TCP data offset beyond the packet, VLAN tags.

The data-path tests run them through the programs with BPF_PROG_TEST_RUN
(``controlplane.libbpf.prog_test_run``); the data-path benchmark and the lab's fault traffic
craft theirs here too, which is why it lives in the lab package rather than under tests/.
L4 checksums are left zero: TC programs do not verify them, and nothing made here is put on a
wire (the lab's own senders fill them in with :func:`ip_checksum`).
"""

from __future__ import annotations

import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def ip_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ether(payload: bytes, ethertype: int) -> bytes:
    return MAC_B + MAC_A + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ihl: int = 5, ttl: int = 64,
         frag_offset: int = 0, more_fragments: bool = False, options: bytes = b"") -> bytes:
    """An IPv4 packet; ``ihl`` may lie (bad IHL), ``options`` fill the header to 4*ihl."""
    frag = (frag_offset // 8) | (0x2000 if more_fragments else 0)
    total = 20 + len(options) + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", (4 << 4) | (ihl & 0xF), 0, total, 1, frag, ttl, proto,
                      0, ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", ip_checksum(hdr + options)) + hdr[12:]
    return hdr + options + payload


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes,
         ext: list[tuple[int, bytes]] | None = None, hlim: int = 64) -> bytes:
    """An IPv6 packet. ``ext`` is a list of (header type, body) extension headers, in order;
    each body is the header without its first (next header) byte, see :func:`ext_hdr`."""
    chain = b""
    types = [t for t, _ in ext or []] + [nexthdr]
    for i, (_, body) in enumerate(ext or []):
        chain += bytes([types[i + 1]]) + body
    first = types[0]
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(chain) + len(payload), first, hlim,
                      ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return hdr + chain + payload


def ext_hdr(length_units: int = 0) -> bytes:
    """Body of a hop-by-hop/routing/destination options header of (1+units)*8 bytes."""
    return bytes([length_units]) + b"\x01\x04" + b"\0" * (4 + 8 * length_units)


def frag_hdr(offset: int = 0, more: bool = False, ident: int = 1) -> bytes:
    """Body of an IPv6 fragment header (7 bytes after the next-header byte)."""
    return b"\0" + struct.pack("!HI", (offset & 0xFFF8) | (1 if more else 0), ident)


def tcp_hdr(sport: int, dport: int, flags: str = "S", seq: int = 0, ack: int = 0,
            payload: bytes = b"", doff: int = 5) -> bytes:
    fl = 0
    for ch in flags:
        fl |= TCP_FLAGS[ch]
    opts = b"\0" * max(0, (doff - 5) * 4) if doff <= 15 else b""
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       (doff & 0xF) << 4, fl, 65535, 0, 0) + opts + payload


def udp_hdr(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_hdr(type_: int, code: int = 0, rest: bytes = b"\0\0\0\0", payload: bytes = b"") -> bytes:
    return struct.pack("!BBH", type_, code, 0) + rest + payload


def _is6(addr: str) -> bool:
    return ipaddress.ip_address(addr).version == 6


def _ip(src: str, dst: str, proto: int, l4: bytes, **kw: object) -> bytes:
    if _is6(src):
        return ether(ipv6(src, dst, proto, l4, **kw), ETH_P_IPV6)  # type: ignore[arg-type]
    return ether(ipv4(src, dst, proto, l4, **kw), ETH_P_IP)  # type: ignore[arg-type]


def _pad(frame: bytes, size: int | None) -> bytes:
    return frame + b"\0" * (size - len(frame)) if size and len(frame) < size else frame


def tcp(src: str, dst: str, sport: int, dport: int, flags: str = "S", seq: int = 0,
        ack: int = 0, payload: bytes = b"", doff: int = 5, size: int | None = None,
        **ip_kw: object) -> bytes:
    """A TCP frame; ``size`` pads the frame with payload bytes (64 for the benchmark)."""
    if size:
        payload += b"\0" * max(0, size - 14 - (40 if _is6(src) else 20) - 20 - len(payload))
    proto = 6
    return _pad(_ip(src, dst, proto, tcp_hdr(sport, dport, flags, seq, ack, payload, doff),
                    **ip_kw), None)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"",
        **ip_kw: object) -> bytes:
    return _ip(src, dst, 17, udp_hdr(sport, dport, payload), **ip_kw)


def icmp_echo(src: str, dst: str, ident: int, seq: int = 1, reply: bool = False) -> bytes:
    if _is6(src):
        t = 129 if reply else 128
        return _ip(src, dst, 58, icmp_hdr(t, 0, struct.pack("!HH", ident, seq)))
    t = 0 if reply else 8
    return _ip(src, dst, 1, icmp_hdr(t, 0, struct.pack("!HH", ident, seq)))


def icmp_error(src: str, dst: str, quoted: bytes, type_: int | None = None,
               code: int = 0) -> bytes:
    """An ICMP error from ``src`` to ``dst`` quoting ``quoted`` (an IP packet, no Ethernet):
    destination unreachable by default (3 for IPv4, 1 for IPv6)."""
    if _is6(src):
        return _ip(src, dst, 58, icmp_hdr(1 if type_ is None else type_, code, payload=quoted))
    return _ip(src, dst, 1, icmp_hdr(3 if type_ is None else type_, code, payload=quoted))


def icmp6(src: str, dst: str, type_: int, code: int = 0, hlim: int = 64) -> bytes:
    """An ICMPv6 message of ``type_`` (ND, MLD, ...) with hop limit ``hlim``."""
    return _ip(src, dst, 58, icmp_hdr(type_, code, payload=b"\0" * 16), hlim=hlim)


def vlan(frame: bytes, *tags: tuple[int, int]) -> bytes:
    """``frame`` with VLAN tags in the data, outermost first: (TPID, VLAN id) pairs, e.g.
    ``(ETH_P_8021AD, 100), (ETH_P_8021Q, 10)`` for QinQ (as a device without VLAN
    offload hands them to TC)."""
    body = b"".join(struct.pack("!HH", tpid, vid & 0xFFF) for tpid, vid in tags)
    return frame[:12] + body + frame[12:]


ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8


def strip_ether(frame: bytes) -> bytes:
    return frame[14:]
