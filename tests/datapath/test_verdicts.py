"""Table of packet sequences -> verdict reasons and map state, for IPv4 and IPv6.

Adding a case is adding a row to CASES.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from lab import packets as tr
from tests.datapath.cases import (
    BASE_CLOCK_S,
    NETS,
    TUN,
    TUN2,
    Act,
    Case,
    EventIs,
    FlowIs,
    Net,
    add_sel,
    advance,
    bump,
    down,
    handshake,
    inb,
    out,
    pickup,
    reclassify,
    release,
    run_steps,
    up,
)

pytestmark = pytest.mark.bpf

C_PORT, S_PORT = 40000, 80


def _cs(n: Net) -> dict[str, Any]:
    return {"a": (n.c, C_PORT), "b": (n.s, S_PORT)}


def _icmp_proto(n: Net) -> int:
    return 1 if n.family == 4 else 58


def _inner_tcp(n: Net) -> bytes:
    """The IP packet an ICMP error quotes: client -> server, TCP."""
    return tr.strip_ether(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001))


CASES = [
    Case("TCP handshake from the LAN creates, establishes and accounts the flow",
         lambda n: handshake(n) + [
             FlowIs(**_cs(n), attrs={"tcp_state": "ESTABLISHED", "tunnel_id": TUN,
                                     "generation": 0, "pkts": (2, 1), "opener_is_a": True,
                                     "a_is_lan": True, "created_s": BASE_CLOCK_S}),
         ]),
    Case("TCP handshake from the remote side (inbound SYN)",
         lambda n: [
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "S", seq=7), "PASS_NEW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "SYN_SENT", "opener_is_a": False}),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "SA", seq=9, ack=8), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "SYN_RECV"}),
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "A", seq=8, ack=10), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "ESTABLISHED", "pkts": (1, 2),
                                     "a_is_lan": True}),
         ]),
    Case("data both ways refreshes last-forwarded and seq/ack",
         lambda n: handshake(n) + [
             advance(30),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "PA", seq=1001, ack=5001,
                        payload=b"x" * 100), "PASS_FLOW"),
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "PA", seq=5001, ack=1101,
                        payload=b"y" * 10), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"last_s": BASE_CLOCK_S + 30, "pkts": (3, 2),
                                     "created_s": BASE_CLOCK_S}),
         ]),
    Case("FIN each way: half-closed then closed",
         lambda n: handshake(n) + [
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "FA", seq=1001, ack=5001), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "HALF_CLOSED"}),
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "FA", seq=5001, ack=1002), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "CLOSED"}),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1002, ack=5002), "PASS_FLOW"),
         ]),
    Case("FIN from the remote side first",
         lambda n: handshake(n) + [
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "FA", seq=5001, ack=1001), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "HALF_CLOSED"}),
         ]),
    Case("RST closes; a new SYN on the same tuple opens a new connection",
         lambda n: handshake(n) + [
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "R", seq=5001), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "CLOSED"}),
             advance(5),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=9000), "PASS_NEW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "SYN_SENT", "pkts": (1, 0),
                                     "created_s": BASE_CLOCK_S + 5}),
         ]),
    Case("a retransmitted SYN is accounted on its flow, not created again",
         lambda n: [
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=1000), "PASS_NEW"),
             advance(3),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=1000), "PASS_FLOW"),
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "S", seq=7), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"pkts": (2, 1), "created_s": BASE_CLOCK_S,
                                     "last_s": BASE_CLOCK_S + 3, "opener_is_a": True}),
         ]),
    Case("a SYN on a held flow is held, not a new flow",
         lambda n: handshake(n) + [
             down(),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=1), "DROP_HELD"),
             FlowIs(**_cs(n), attrs={"pkts": (2, 1), "tcp_state": "ESTABLISHED"}),
         ]),
    Case("TCP without SYN and no flow is dropped as no-connection, both directions",
         lambda n: [
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1, ack=1), "DROP_NO_CONN"),
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "PA", seq=1, ack=1), "DROP_NO_CONN"),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "SA", seq=1, ack=1), "DROP_NO_CONN"),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "R", seq=1), "DROP_NO_CONN"),
             FlowIs(**_cs(n), absent=True),
         ]),
    Case("pickup window: mid-stream TCP is picked up after the first attach",
         lambda n: [
             pickup(60, 10),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1, ack=1), "PASS_PICKUP"),
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "A", seq=1, ack=1), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "ESTABLISHED", "tunnel_id": TUN}),
         ]),
    Case("pickup window over: strict again",
         lambda n: [
             pickup(60, 61),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1, ack=1), "DROP_NO_CONN"),
         ]),
    Case("pickup window: a connection flowpin tore down is not taken up again",
         lambda n: [pickup(60, 5)] + handshake(n) + [
             bump(),  # preserve-vpn-flows off, tunnel down then up: the flow is stale
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001), "DROP_STALE"),
             FlowIs(**_cs(n), absent=True),
         ]),
    Case("pickup window: nor once the sweeper has removed its entry",
         lambda n: [pickup(60, 5)] + handshake(n) + [
             bump(),
             Act("sweep", lambda t: t.clear_flows()),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001), "DROP_NO_CONN"),
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "A", seq=5001, ack=1001), "DROP_NO_CONN"),
         ]),
    Case("pickup window: a tunnel never torn down still picks up beside one that was",
         lambda n: [pickup(60, 5), bump(), up(TUN2),
                    out(tr.tcp(n.c5, n.s, C_PORT, S_PORT, "A", seq=1, ack=1), "PASS_PICKUP"),
                    out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1, ack=1), "DROP_NO_CONN"),
                    ]),
    Case("pin -> hold -> resume: a held flow stays, is not refreshed, resumes",
         lambda n: handshake(n) + [
             down(),
             advance(100),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "PA", seq=1001, ack=5001), "DROP_HELD"),
             inb(tr.tcp(n.s, n.c, S_PORT, C_PORT, "PA", seq=5001, ack=1001), "DROP_HELD"),
             FlowIs(**_cs(n), attrs={"last_s": BASE_CLOCK_S, "pkts": (2, 1),
                                     "tcp_state": "ESTABLISHED"}),
             EventIs("DEMAND", TUN),
             up(),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "PA", seq=1001, ack=5001), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"last_s": BASE_CLOCK_S + 100, "pkts": (3, 1)}),
         ]),
    Case("tunnel down: a new TCP flow is refused and demand is signalled once",
         lambda n: [
             down(),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=1), "DROP_TUNNEL_DOWN"),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=1), "DROP_TUNNEL_DOWN"),
             EventIs("DEMAND", TUN, count=1),
             FlowIs(**_cs(n), absent=True),
         ]),
    Case("tunnel never up: nothing of it passes, not even inbound",
         lambda n: [
             out(tr.tcp(n.c5, n.s, C_PORT, S_PORT, "S", seq=1), "DROP_TUNNEL_DOWN"),
             inb(tr.udp(n.s, n.c5, 53, 5353), "DROP_TUNNEL_DOWN"),
             out(tr.icmp_echo(n.c5, n.s, 7), "DROP_TUNNEL_DOWN"),
             EventIs("DEMAND", TUN2, count=1),
         ]),
    Case("release while down: the held flow is dropped and removed",
         lambda n: handshake(n) + [
             down(),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001), "DROP_HELD"),
             release(),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001),
                 "DROP_TUNNEL_DOWN"),
             FlowIs(**_cs(n), absent=True),
             EventIs("FLOW_REMOVED", TUN),
         ]),
    Case("teardown by generation: the stale flow is dropped and removed, a SYN rebinds",
         lambda n: handshake(n) + [
             bump(),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001), "DROP_STALE"),
             FlowIs(**_cs(n), absent=True),
             EventIs("FLOW_REMOVED", TUN),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=1), "PASS_NEW"),
             FlowIs(**_cs(n), attrs={"generation": 1, "tcp_state": "SYN_SENT"}),
         ]),
    Case("teardown by generation: a SYN replaces the stale flow directly",
         lambda n: handshake(n) + [
             bump(),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=1), "PASS_NEW"),
             FlowIs(**_cs(n), attrs={"generation": 1, "pkts": (1, 0)}),
             EventIs("FLOW_REMOVED", TUN),
         ]),
    Case("teardown while down: a stale flow is not held",
         lambda n: handshake(n) + [
             down(), bump(),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001),
                 "DROP_TUNNEL_DOWN"),
             FlowIs(**_cs(n), absent=True),
         ]),
    Case("UDP creates on the first packet and is never preserved",
         lambda n: [
             out(tr.udp(n.c, n.s, 5000, 53, b"q"), "PASS_NEW"),
             inb(tr.udp(n.s, n.c, 53, 5000, b"a"), "PASS_FLOW"),
             FlowIs((n.c, 5000), (n.s, 53), proto=17, attrs={"pkts": (1, 1), "tcp_state": ""}),
             down(),
             out(tr.udp(n.c, n.s, 5000, 53, b"q"), "DROP_TUNNEL_DOWN"),
             FlowIs((n.c, 5000), (n.s, 53), proto=17, absent=True),
             up(),
             out(tr.udp(n.c, n.s, 5000, 53, b"q"), "PASS_NEW"),
         ]),
    Case("UDP first packet from the remote side",
         lambda n: [
             inb(tr.udp(n.s, n.c, 4500, 4500), "PASS_NEW"),
             FlowIs((n.c, 4500), (n.s, 4500), proto=17, attrs={"opener_is_a": False}),
         ]),
    Case("ICMP echo creates, the reply follows",
         lambda n: [
             out(tr.icmp_echo(n.c, n.s, 77), "PASS_NEW"),
             inb(tr.icmp_echo(n.s, n.c, 77, reply=True), "PASS_FLOW"),
             FlowIs((n.c, 77), (n.s, 77), proto=_icmp_proto(n), attrs={"pkts": (1, 1)}),
         ]),
    Case("ICMP error about a tracked flow follows it, without refreshing it",
         lambda n: handshake(n) + [
             advance(20),
             inb(tr.icmp_error(n.r, n.c, _inner_tcp(n)), "PASS_RELATED"),
             FlowIs(**_cs(n), attrs={"last_s": BASE_CLOCK_S, "pkts": (2, 1)}),
             down(),
             inb(tr.icmp_error(n.r, n.c, _inner_tcp(n)), "DROP_TUNNEL_DOWN"),
         ]),
    Case("ICMP error about no flow: classified by its addresses",
         lambda n: [
             inb(tr.icmp_error(n.r, n.c, _inner_tcp(n)), "PASS_UNTRACKED"),
             down(),
             inb(tr.icmp_error(n.r, n.c, _inner_tcp(n)), "DROP_TUNNEL_DOWN"),
         ]),
    Case("traffic matching no tunnel always passes and is tracked on tunnel 0",
         lambda n: [
             out(tr.tcp(n.c, n.n, C_PORT, 443, "A", seq=1, ack=1), "PASS_NONVPN"),
             inb(tr.tcp(n.n, n.c, 443, C_PORT, "A", seq=1, ack=1), "PASS_NONVPN"),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "S", seq=1), "PASS_NONVPN"),
             out(tr.udp(n.c, n.n, 5000, 53), "PASS_NONVPN"),
             FlowIs((n.c, C_PORT), (n.n, 443), attrs={"tunnel_id": 0, "pkts": (1, 1)}),
             FlowIs((n.o, C_PORT), (n.s, S_PORT), attrs={"tunnel_id": 0}),
             down(),
             out(tr.tcp(n.c, n.n, C_PORT, 443, "A", seq=1, ack=1), "PASS_NONVPN"),
         ]),
    Case("several selector pairs per tunnel; same remote, other local -> other tunnel",
         lambda n: [
             out(tr.tcp(n.c3, n.s3, C_PORT, S_PORT, "S"), "PASS_NEW"),
             FlowIs((n.c3, C_PORT), (n.s3, S_PORT), attrs={"tunnel_id": TUN}),
             out(tr.tcp(n.c5, n.s, C_PORT, S_PORT, "S"), "DROP_TUNNEL_DOWN"),
             up(TUN2),
             out(tr.tcp(n.c5, n.s, C_PORT, S_PORT, "S"), "PASS_NEW"),
             FlowIs((n.c5, C_PORT), (n.s, S_PORT), attrs={"tunnel_id": TUN2}),
         ]),
    Case("non-IP frames pass",
         lambda n: [
             out(tr.ether(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20, tr.ETH_P_ARP),
                 "PASS_NOT_IP"),
             inb(tr.ether(b"\0" * 46, 0x88CC), "PASS_NOT_IP"),
         ]),
    Case("a non-first fragment is classified by addresses: passes up, dropped down",
         lambda n: [
             out(_fragment(n), "PASS_UNTRACKED"),
             down(),
             out(_fragment(n), "DROP_TUNNEL_DOWN"),
         ]),
    Case("IPv6 ND on the link passes whatever the tunnels' states (RFC 4861: hop limit 255)",
         lambda n: [
             down(),
             add_sel(TUN2, n.local, "::/0"),  # a full tunnel, down: covers ff02::/16 too
             out(tr.icmp6("fe80::5", SOLICITED, 135, hlim=255), "PASS_UNTRACKED"),
             inb(tr.icmp6("fe80::1", "fe80::5", 136, hlim=255), "PASS_UNTRACKED"),
             out(tr.icmp6("::", SOLICITED, 135, hlim=255), "PASS_UNTRACKED"),  # DAD
             out(tr.icmp6(n.c, SOLICITED, 135, hlim=255), "PASS_UNTRACKED"),  # to link scope
             out(tr.icmp6("fe80::5", "ff02::2", 133, hlim=255), "PASS_UNTRACKED"),  # RS
             inb(tr.icmp6("fe80::1", "ff02::1", 134, hlim=255), "PASS_UNTRACKED"),  # RA
         ], families=(6,)),
    Case("IPv6 ND not provably on the link is judged by its addresses and tunnel state",
         lambda n: [
             out(tr.icmp6(n.c, n.s, 136, hlim=255), "PASS_UNTRACKED"),
             down(),
             # routable source and destination: a router would forward it to the WAN
             out(tr.icmp6(n.c, n.s, 136, hlim=255), "DROP_TUNNEL_DOWN"),
             inb(tr.icmp6(n.s, n.c, 135, hlim=255), "DROP_TUNNEL_DOWN"),
             add_sel(TUN2, n.local, "::/0"),
             out(tr.icmp6(n.c, SOLICITED, 135, hlim=64), "DROP_TUNNEL_DOWN"),  # hop limit
             out(tr.icmp6(n.c, n.n, 137, hlim=255), "DROP_TUNNEL_DOWN"),  # redirect
         ], families=(6,)),
    Case("MLD passes on the link only (RFC 2710/3810: link-local source, hop limit 1)",
         lambda n: [
             down(),
             add_sel(TUN2, n.local, "::/0"),
             out(tr.icmp6("fe80::5", "ff02::16", 143, hlim=1), "PASS_UNTRACKED"),
             out(tr.icmp6("::", "ff02::16", 143, hlim=1), "PASS_UNTRACKED"),  # before DAD
             inb(tr.icmp6("fe80::1", "ff02::1", 130, hlim=1), "PASS_UNTRACKED"),
             out(tr.icmp6(n.c, "ff02::16", 143, hlim=1), "DROP_TUNNEL_DOWN"),  # global src
             out(tr.icmp6(n.c, n.s, 131, hlim=1), "DROP_TUNNEL_DOWN"),
             up(TUN2),
             out(tr.icmp6(n.c, "ff02::16", 143, hlim=1), "PASS_UNTRACKED"),
         ], families=(6,)),
    Case("ICMP error about a non-VPN flow, outer addresses of a down tunnel: refused",
         lambda n: [
             out(tr.tcp(n.c, n.n, C_PORT, 443, "S", seq=1), "PASS_NONVPN"),
             inb(tr.icmp_error(n.s, n.c, _quote(n.c, n.n)), "PASS_RELATED"),
             out(tr.icmp_error(n.c, n.s, _quote(n.n, n.c)), "PASS_RELATED"),
             down(),
             inb(tr.icmp_error(n.s, n.c, _quote(n.c, n.n)), "DROP_TUNNEL_DOWN"),
             out(tr.icmp_error(n.c, n.s, _quote(n.n, n.c)), "DROP_TUNNEL_DOWN"),
             inb(tr.icmp_error(n.n, n.c, _quote(n.c, n.n)), "PASS_RELATED"),  # outer non-VPN
         ]),
    Case("ICMP error about a tunnel's flow, outer addresses of another tunnel that is down",
         lambda n: handshake(n) + [
             inb(tr.icmp_error(n.s, n.c5, _inner_tcp(n)), "DROP_TUNNEL_DOWN"),
             FlowIs(**_cs(n), attrs={"pkts": (2, 1)}),
         ]),
    Case("802.1Q and QinQ frames without VLAN offload are judged like untagged ones",
         lambda n: [
             out(_q(tr.tcp(n.c, n.s, C_PORT, S_PORT, "S", seq=1000)), "PASS_NEW"),
             inb(_qinq(tr.tcp(n.s, n.c, S_PORT, C_PORT, "SA", seq=5000, ack=1001)),
                 "PASS_FLOW"),
             out(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001), "PASS_FLOW"),
             FlowIs(**_cs(n), attrs={"tcp_state": "ESTABLISHED", "tunnel_id": TUN,
                                     "pkts": (2, 1)}),
             out(_q(tr.tcp(n.c, n.s, 1, S_PORT, "A", seq=1, ack=1)), "DROP_NO_CONN"),
             out(_qinq(tr.udp(n.c, n.n, 5000, 53)), "PASS_NONVPN"),
             down(),
             out(_q(tr.tcp(n.c, n.s, C_PORT, S_PORT, "A", seq=1001, ack=5001)), "DROP_HELD"),
             out(_qinq(tr.udp(n.c, n.s, 5000, 53)), "DROP_TUNNEL_DOWN"),
             out(_q(_fragment(n)), "DROP_TUNNEL_DOWN"),
             inb(_qinq(tr.icmp_error(n.r, n.c, _inner_tcp(n))), "DROP_TUNNEL_DOWN"),
             out(_q(tr.ether(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20,
                             tr.ETH_P_ARP)), "PASS_NOT_IP"),
         ]),
    # -- tunnel 0 is re-checked when the selectors change ------------------------------
    Case("selectors change: a non-VPN flow now covered by a down tunnel is refused",
         lambda n: [
             out(tr.udp(n.o, n.s, 5000, 53), "PASS_NONVPN"),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "S", seq=1), "PASS_NONVPN"),
             inb(tr.tcp(n.s, n.o, S_PORT, C_PORT, "SA", seq=7, ack=2), "PASS_NONVPN"),
             add_sel(TUN2, _o_net(n), n.remote),  # TUN2 is down
             FlowIs((n.o, 5000), (n.s, 53), proto=17, attrs={"tunnel_id": 0}),
             out(tr.udp(n.o, n.s, 5000, 53), "DROP_TUNNEL_DOWN"),
             inb(tr.tcp(n.s, n.o, S_PORT, C_PORT, "A", seq=8, ack=2), "DROP_TUNNEL_DOWN"),
             FlowIs((n.o, 5000), (n.s, 53), proto=17, absent=True),
             FlowIs((n.o, C_PORT), (n.s, S_PORT), absent=True),
             EventIs("DEMAND", TUN2),
             up(TUN2),  # then as reclassify-vpn: UDP starts in the tunnel, TCP was cleared
             out(tr.udp(n.o, n.s, 5000, 53), "PASS_NEW"),
             FlowIs((n.o, 5000), (n.s, 53), proto=17, attrs={"tunnel_id": TUN2}),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "A", seq=2, ack=8), "DROP_NO_CONN"),
         ]),
    Case("selectors change: covered by an up tunnel, as reclassify-vpn says (cleared)",
         lambda n: [
             out(tr.udp(n.o, n.s, 5000, 53), "PASS_NONVPN"),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "S", seq=1), "PASS_NONVPN"),
             add_sel(TUN, _o_net(n), n.remote),
             out(tr.udp(n.o, n.s, 5000, 53), "PASS_NEW"),
             FlowIs((n.o, 5000), (n.s, 53), proto=17, attrs={"tunnel_id": TUN,
                                                             "pkts": (1, 0)}),
             inb(tr.tcp(n.s, n.o, S_PORT, C_PORT, "SA", seq=7, ack=2), "DROP_STALE"),
             FlowIs((n.o, C_PORT), (n.s, S_PORT), absent=True),
             EventIs("FLOW_REMOVED", 0),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "S", seq=1), "PASS_NEW"),
             FlowIs((n.o, C_PORT), (n.s, S_PORT), attrs={"tunnel_id": TUN}),
         ]),
    Case("reclassify-vpn off: a covered non-VPN flow is not cut but bound to the tunnel",
         lambda n: [
             reclassify(False),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "S", seq=1), "PASS_NONVPN"),
             inb(tr.tcp(n.s, n.o, S_PORT, C_PORT, "SA", seq=7, ack=2), "PASS_NONVPN"),
             out(tr.udp(n.o, n.s, 5000, 53), "PASS_NONVPN"),
             add_sel(TUN, _o_net(n), n.remote),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "A", seq=2, ack=8), "PASS_FLOW"),
             FlowIs((n.o, C_PORT), (n.s, S_PORT), attrs={"tunnel_id": TUN, "pkts": (2, 1),
                                                         "tcp_state": "ESTABLISHED"}),
             down(),  # ... and never passes while that tunnel is down
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "A", seq=2, ack=8), "DROP_HELD"),
             out(tr.udp(n.o, n.s, 5000, 53), "DROP_TUNNEL_DOWN"),
             FlowIs((n.o, 5000), (n.s, 53), proto=17, absent=True),
             up(),
             inb(tr.tcp(n.s, n.o, S_PORT, C_PORT, "A", seq=8, ack=2), "PASS_FLOW"),
         ]),
    Case("reclassify-vpn off: covered by a down tunnel: held or refused, resumes with it",
         lambda n: [
             reclassify(False),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "S", seq=1), "PASS_NONVPN"),
             inb(tr.tcp(n.s, n.o, S_PORT, C_PORT, "SA", seq=7, ack=2), "PASS_NONVPN"),
             out(tr.icmp_echo(n.o, n.s, 9), "PASS_NONVPN"),
             add_sel(TUN2, _o_net(n), n.remote),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "A", seq=2, ack=8), "DROP_HELD"),
             out(tr.icmp_echo(n.o, n.s, 9), "DROP_TUNNEL_DOWN"),
             FlowIs((n.o, C_PORT), (n.s, S_PORT), attrs={"tunnel_id": TUN2, "pkts": (1, 1)}),
             up(TUN2),
             out(tr.tcp(n.o, n.s, C_PORT, S_PORT, "A", seq=2, ack=8), "PASS_FLOW"),
             FlowIs((n.o, C_PORT), (n.s, S_PORT), attrs={"tunnel_id": TUN2, "pkts": (2, 1)}),
         ]),
    Case("selectors change elsewhere: a non-VPN flow keeps its state and passes",
         lambda n: [
             out(tr.tcp(n.c, n.n, C_PORT, 443, "S", seq=1), "PASS_NONVPN"),
             inb(tr.tcp(n.n, n.c, 443, C_PORT, "SA", seq=7, ack=2), "PASS_NONVPN"),
             add_sel(TUN2, n.local5, n.remote3),
             out(tr.tcp(n.c, n.n, C_PORT, 443, "A", seq=2, ack=8), "PASS_NONVPN"),
             FlowIs((n.c, C_PORT), (n.n, 443), attrs={"tunnel_id": 0, "pkts": (2, 1),
                                                      "tcp_state": "ESTABLISHED"}),
             EventIs("FLOW_REMOVED", 0, count=0),
         ]),
    Case("other IP protocols: no flow, classified by addresses",
         lambda n: [
             out(_proto47(n), "PASS_UNTRACKED"),
             out(_proto47(n, n.n), "PASS_UNTRACKED"),
             down(),
             out(_proto47(n), "DROP_TUNNEL_DOWN"),
             out(_proto47(n, n.n), "PASS_UNTRACKED"),
         ]),
]


SOLICITED = "ff02::1:ff00:9"  # solicited-node multicast (link scope)


def _quote(src: str, dst: str) -> bytes:
    """The IP packet an ICMP error quotes: ``src`` -> ``dst``, TCP to port 443."""
    sport, dport = (C_PORT, 443) if dst != NETS[4].c and dst != NETS[6].c else (443, C_PORT)
    return tr.strip_ether(tr.tcp(src, dst, sport, dport, "S", seq=1))


def _o_net(n: Net) -> str:
    """A prefix for the LAN host ``o`` (outside every local prefix of the standard set)."""
    return str(ipaddress.ip_network(f"{n.o}/{16 if n.family == 4 else 64}", strict=False))


def _q(frame: bytes) -> bytes:
    return tr.vlan(frame, (tr.ETH_P_8021Q, 10))


def _qinq(frame: bytes) -> bytes:
    return tr.vlan(frame, (tr.ETH_P_8021AD, 100), (tr.ETH_P_8021Q, 10))


def _fragment(n: Net) -> bytes:
    if n.family == 4:
        return tr.ether(tr.ipv4(n.c, n.s, 6, b"\0" * 24, frag_offset=1480), tr.ETH_P_IP)
    return tr.ether(tr.ipv6(n.c, n.s, 6, b"\0" * 24, ext=[(44, tr.frag_hdr(1480))]),
                    tr.ETH_P_IPV6)


def _proto47(n: Net, dst: str | None = None) -> bytes:
    if n.family == 4:
        return tr.ether(tr.ipv4(n.c, dst or n.s, 47, b"\0" * 24), tr.ETH_P_IP)
    return tr.ether(tr.ipv6(n.c, dst or n.s, 47, b"\0" * 24), tr.ETH_P_IPV6)


PARAMS = [pytest.param(c, fam, id=f"v{fam}-{c.desc}") for c in CASES for fam in c.families]


@pytest.mark.parametrize(("case", "family"), PARAMS)
def test_verdicts(dp: Any, case: Case, family: int) -> None:
    run_steps(dp, case.steps(NETS[family]))
