"""Malformed and unusual packets: never a crash, always a defined verdict.

Rows: description, hook, frame, expected reason. Adding a case is adding a row.
``KERNEL_REFUSES``: BPF_PROG_TEST_RUN itself rejects the frame (EINVAL): since 6.x it
wants a whole IPv4 (34 bytes) or IPv6 (54 bytes) header behind an IP ethertype. The
program's bounds checks for those shapes are still proven by the verifier.
"""

from __future__ import annotations

import errno
import random
import struct
from typing import Any

import pytest

from controlplane.datapath import PROG_INBOUND, PROG_OUTBOUND
from controlplane.libbpf import prog_test_run
from lab import packets as tr
from tests.datapath.cases import NET4, NET6, Pkt, run_steps

pytestmark = pytest.mark.bpf

C4, S4, C6, S6 = NET4.c, NET4.s, NET6.c, NET6.s
SYN4 = tr.tcp(C4, S4, 40000, 80, "S")
SYN6 = tr.tcp(C6, S6, 40000, 80, "S")
IP4 = tr.ETH_P_IP
IP6 = tr.ETH_P_IPV6


def _ip4_tcp(doff: int, tail: int = 0) -> bytes:
    """IPv4 + a TCP header with data offset ``doff`` and ``tail`` option bytes present."""
    hdr = bytearray(tr.tcp_hdr(40000, 80, "S"))
    hdr[12] = (doff & 0xF) << 4
    return tr.ether(tr.ipv4(C4, S4, 6, bytes(hdr) + b"\0" * tail), IP4)


def _quote_trunc4() -> bytes:
    inner = tr.strip_ether(tr.tcp(C4, S4, 40000, 80, "A"))[:24]  # IP + 4 bytes of TCP
    return tr.icmp_error("10.2.255.1", C4, inner)


def _hbh_chain6(n: int) -> bytes:
    return tr.ether(tr.ipv6(C6, S6, 6, tr.tcp_hdr(40000, 80, "S"),
                            ext=[(0, tr.ext_hdr())] * n), IP6)


ROWS: list[tuple[str, str, bytes, str]] = [
    # Ethernet / IP headers
    ("Ethernet header only, IPv4 ethertype", "out", tr.ether(b"", IP4), "KERNEL_REFUSES"),
    ("Ethernet header only, IPv6 ethertype", "in", tr.ether(b"", IP6), "KERNEL_REFUSES"),
    ("IPv4 header truncated (10 bytes)", "out", SYN4[:24], "KERNEL_REFUSES"),
    ("Ethernet header only, ARP ethertype", "out", tr.ether(b"", tr.ETH_P_ARP), "PASS_NOT_IP"),
    ("IPv4 bad IHL 3", "out", tr.ether(tr.ipv4(C4, S4, 6, tr.tcp_hdr(1, 2), ihl=3), IP4),
     "DROP_MALFORMED"),
    ("IPv4 IHL 15 beyond the packet", "out",
     tr.ether(tr.ipv4(C4, S4, 6, b"\0" * 8, ihl=15), IP4), "DROP_MALFORMED"),
    ("IPv4 with options (IHL 6) parsed past them", "out",
     tr.ether(tr.ipv4(C4, S4, 6, tr.tcp_hdr(40000, 80, "S"), ihl=6, options=b"\x01" * 4), IP4),
     "PASS_NEW"),
    ("IPv4 ethertype, version 6 inside", "out", tr.ether(tr.strip_ether(SYN6), IP4),
     "DROP_MALFORMED"),
    ("IPv6 ethertype, version 4 inside", "out", tr.ether(tr.strip_ether(SYN4), IP6),
     "DROP_MALFORMED"),
    ("IPv6 header truncated (20 bytes)", "out", SYN6[:34], "KERNEL_REFUSES"),
    # TCP
    ("TCP header truncated (10 bytes)", "out", SYN4[:44], "DROP_MALFORMED"),
    ("TCP data offset 15 beyond the packet", "out", _ip4_tcp(15), "DROP_MALFORMED"),
    ("TCP data offset 3 (below the header)", "out", _ip4_tcp(3), "DROP_MALFORMED"),
    ("TCP data offset 8 with its options present", "out", _ip4_tcp(8, 12), "PASS_NEW"),
    ("IPv6 TCP header truncated", "in", SYN6[:64], "DROP_MALFORMED"),
    # UDP / ICMP
    ("UDP header truncated", "out", tr.udp(C4, S4, 1, 2)[:38], "DROP_MALFORMED"),
    ("ICMP header truncated", "out", tr.icmp_echo(C4, S4, 5)[:38], "DROP_MALFORMED"),
    ("ICMPv6 header truncated", "out", tr.icmp_echo(C6, S6, 5)[:58], "DROP_MALFORMED"),
    ("ICMP error quoting a truncated TCP header", "in", _quote_trunc4(), "DROP_MALFORMED"),
    ("ICMP error quoting nothing", "in", tr.icmp_error("10.2.255.1", C4, b""),
     "DROP_MALFORMED"),
    ("ICMP error quoting a non-first fragment", "in",
     tr.icmp_error("10.2.255.1", C4, tr.ipv4(C4, S4, 6, b"\0" * 8, frag_offset=8)),
     "PASS_UNTRACKED"),
    # fragments
    ("IPv4 first fragment (MF, offset 0) is tracked", "out",
     tr.tcp(C4, S4, 40000, 80, "S", more_fragments=True), "PASS_NEW"),
    ("IPv4 non-first fragment", "out",
     tr.ether(tr.ipv4(C4, S4, 6, b"\0" * 16, frag_offset=64), IP4), "PASS_UNTRACKED"),
    ("IPv6 first fragment is tracked", "out",
     tr.ether(tr.ipv6(C6, S6, 6, tr.tcp_hdr(40000, 80, "S"),
                      ext=[(44, tr.frag_hdr(0, more=True))]), IP6), "PASS_NEW"),
    ("IPv6 non-first fragment", "out",
     tr.ether(tr.ipv6(C6, S6, 6, b"\0" * 16, ext=[(44, tr.frag_hdr(64))]), IP6),
     "PASS_UNTRACKED"),
    # IPv6 extension headers
    ("IPv6 hop-by-hop then TCP", "out", _hbh_chain6(1), "PASS_NEW"),
    ("IPv6 hop-by-hop, routing, destination options then TCP", "out",
     tr.ether(tr.ipv6(C6, S6, 6, tr.tcp_hdr(40000, 80, "S"),
                      ext=[(0, tr.ext_hdr()), (43, tr.ext_hdr(1)), (60, tr.ext_hdr())]), IP6),
     "PASS_NEW"),
    ("IPv6 extension header longer than the packet", "out",
     tr.ether(tr.ipv6(C6, S6, 6, b"", ext=[(0, tr.ext_hdr(30))])[:40 + 16], IP6),
     "DROP_MALFORMED"),
    ("IPv6 extension header cut in the middle", "out",
     tr.ether(tr.ipv6(C6, S6, 6, b"", ext=[(0, tr.ext_hdr())]), IP6)[:58], "DROP_MALFORMED"),
    ("IPv6 chain of 6 extension headers is walked", "out", _hbh_chain6(6), "PASS_NEW"),
    ("IPv6 chain longer than we walk: untracked", "out", _hbh_chain6(7), "PASS_UNTRACKED"),
    ("IPv6 ESP: untracked, by addresses", "out",
     tr.ether(tr.ipv6(C6, S6, 50, b"\0" * 16), IP6), "PASS_UNTRACKED"),
    # VLAN tags in the frame
    ("802.1Q tag cut short", "out", tr.ether(b"\x00\x0a", tr.ETH_P_8021Q), "DROP_MALFORMED"),
    ("three VLAN tags: the addresses are out of reach, dropped not passed", "out",
     tr.vlan(SYN4, (tr.ETH_P_8021AD, 1), (tr.ETH_P_8021Q, 2), (tr.ETH_P_8021Q, 3)),
     "DROP_MALFORMED"),
    ("802.1Q then IPv4 with a bad IHL", "out",
     tr.vlan(tr.ether(tr.ipv4(C4, S4, 6, tr.tcp_hdr(1, 2), ihl=3), IP4), (tr.ETH_P_8021Q, 5)),
     "DROP_MALFORMED"),
    ("802.1ad then IPv6 SYN", "out", tr.vlan(SYN6, (tr.ETH_P_8021AD, 7)), "PASS_NEW"),
    ("ICMPv6 ND type carried in IPv4 is not ND", "out",
     tr.ether(tr.ipv4(C4, S4, 58, tr.icmp_hdr(135)), IP4), "PASS_UNTRACKED"),
]


def refused(dp: Any, frame: bytes) -> None:
    """The kernel refuses to run the program on ``frame`` (EINVAL): any other OSError -- a
    bad program fd, libbpf missing -- is not that refusal."""
    with pytest.raises(OSError) as err:
        prog_test_run(dp.prog_fd(PROG_OUTBOUND), frame)
    assert err.value.errno == errno.EINVAL, err.value


@pytest.mark.parametrize(("desc", "hook", "frame", "reason"), ROWS, ids=[r[0] for r in ROWS])
def test_malformed(dp: Any, desc: str, hook: str, frame: bytes, reason: str) -> None:
    if reason == "KERNEL_REFUSES":
        refused(dp, frame)
        return
    run_steps(dp, [Pkt(hook, frame, reason)])


def test_frame_shorter_than_ethernet_is_refused_by_the_kernel(dp: Any) -> None:
    """BPF_PROG_TEST_RUN refuses < 14 bytes for SCHED_CLS (TC never sees such frames)."""
    refused(dp, SYN4[:13])


def test_random_mutations_always_get_a_defined_verdict(dp: Any) -> None:
    """2000 mutated/truncated frames: every run returns OK or SHOT and counts exactly one
    verdict reason."""
    rnd = random.Random(1234)
    seeds = [SYN4, SYN6, tr.udp(C4, S4, 1, 2, b"x" * 20), tr.icmp_echo(C6, S6, 9),
             tr.icmp_error("10.2.255.1", C4, tr.strip_ether(SYN4)), _hbh_chain6(3),
             tr.vlan(SYN6, (tr.ETH_P_8021AD, 1), (tr.ETH_P_8021Q, 2)),
             tr.icmp6("fe80::1", "ff02::1:ff00:1", 135, hlim=255)]
    fds = [dp.prog_fd(PROG_OUTBOUND), dp.prog_fd(PROG_INBOUND)]
    t = dp.table
    before = sum(t.counters()[r] for r in _reason_names())
    runs = 0
    for _ in range(2000):
        f = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 6)):
            pos = rnd.randrange(14, len(f))
            f[pos] = rnd.randrange(256)
        f = f[: rnd.randint(54, len(f))]
        res = prog_test_run(rnd.choice(fds), bytes(f))
        assert res.retval in (0, 2, 0xFFFFFFFF)  # OK, SHOT, UNSPEC (TCX_NEXT)
        runs += 1
    after = sum(t.counters()[r] for r in _reason_names())
    assert after - before == runs


def _reason_names() -> list[str]:
    from controlplane.flow_types import Reason

    return [r.name for r in Reason]


def test_ipv4_header_checksum_is_not_our_business(dp: Any) -> None:
    """A wrong IPv4 checksum is the stack's to drop; we classify the packet as usual."""
    f = bytearray(SYN4)
    struct.pack_into("!H", f, 24, 0xDEAD)
    run_steps(dp, [Pkt("out", bytes(f), "PASS_NEW")])
