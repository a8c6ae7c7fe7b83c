"""A flow as the control plane reads it from the flow maps: its canonical key, and what the
data path tracks (sides, sequence numbers, times, packets and bytes each way); and a flow
that is gone, as the teardown log lines tell it."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane import protocols
from controlplane.addresses import IPAddress
from controlplane.flow_types import ACCT_BYTES_BITS, Side


@dataclass(frozen=True)
class FlowKey:
    """Canonical key: endpoint 0 is the lower (address, port)."""

    proto: int
    addr: tuple[IPAddress, IPAddress]
    port: tuple[int, int]

    @property
    def family(self) -> int:
        return self.addr[0].version

    def __str__(self) -> str:
        p = protocols.name(self.proto)
        return f"{p} {self.addr[0]}:{self.port[0]} <-> {self.addr[1]}:{self.port[1]}"


@dataclass(frozen=True)
class Flow:
    """One flow. Arrays of two are indexed by key endpoint (what that endpoint sent)."""

    key: FlowKey
    tunnel_id: int
    generation: int
    side: tuple[int, int]  # FP_SIDE_* bits
    seq: tuple[int, int]
    ack: tuple[int, int]
    created_s: int
    last_s: int
    packets: tuple[int, int]
    bytes: tuple[int, int]

    @property
    def tcp_state(self) -> str:
        """SYN_SENT, SYN_RECV, ESTABLISHED, HALF_CLOSED, CLOSED, or "" for non-TCP."""
        return tcp_state(self.key.proto, self.side)

    @property
    def initiator(self) -> int:
        """Key endpoint that opened the flow."""
        return 1 if self.side[1] & Side.OPENER else 0

    @property
    def lan_side(self) -> int | None:
        for i in (0, 1):
            if self.side[i] & Side.LAN:
                return i
        return None


_BYTES_MASK = (1 << ACCT_BYTES_BITS) - 1


def flow_of(key: FlowKey, tunnel_id: int, generation: int, side0: int, side1: int,
            seq0: int, seq1: int, ack0: int, ack1: int, created_s: int, last_s: int,
            acct0: int, acct1: int) -> Flow:
    """A Flow from its key and the fields of an fp_flow_value in the C's order (the two
    accounting words pack packets and bytes: flow_types.h)."""
    return Flow(key, tunnel_id, generation, (side0, side1), (seq0, seq1), (ack0, ack1),
                created_s, last_s, (acct0 >> ACCT_BYTES_BITS, acct1 >> ACCT_BYTES_BITS),
                (acct0 & _BYTES_MASK, acct1 & _BYTES_MASK))


# The fields flow_of takes, after the key, as layout.py names them in an fp_flow_value.
FLOW_VALUE_FIELDS = ("tunnel_id", "generation", "side[0]", "side[1]", "seq[0]", "seq[1]",
                     "ack[0]", "ack[1]", "created_s", "last_s", "acct[0]", "acct[1]")


def decode_value(key: FlowKey, v: Any) -> Flow:
    """A Flow from its key and a raw fp_flow_value (ctypes from bcc)."""
    return flow_of(key, v.tunnel_id, v.generation, v.side[0], v.side[1], v.seq[0],
                   v.seq[1], v.ack[0], v.ack[1], v.created_s, v.last_s, v.acct[0], v.acct[1])


def tcp_state(proto: int, side: tuple[int, int]) -> str:
    if proto != 6:
        return ""
    s0, s1 = side
    both, either = s0 & s1, s0 | s1
    if either & Side.RST or both & Side.FIN:
        return "CLOSED"
    if either & Side.FIN:
        return "HALF_CLOSED"
    if either & Side.PICKUP:
        return "ESTABLISHED"
    syn = both & Side.SYN
    if syn and both & Side.ACK:
        return "ESTABLISHED"
    if syn:
        return "SYN_RECV"
    return "SYN_SENT"


class RawDecoder(Protocol):
    def decode_raw(self, family: int, key: bytes, value: bytes) -> Flow:
        """A Flow from the bytes of a key and a value of ``family``'s flow map."""


@dataclass(frozen=True, eq=False)
class RemovedFlow:
    """A flow that is gone, for the logs: both ends (initiator first), protocol, tunnel,
    duration, bytes and packets each way (initiator -> responder first), reason.

    A sweep may remove a million flows at once: the record keeps the raw key and value
    bytes and decodes them (addresses and all) only when a field is read.
    """

    reason: str
    duration_s: float
    decoded: Flow | None = None
    raw: tuple[RawDecoder, int, bytes, bytes] | None = None  # table, family, key, value

    @functools.cached_property
    def flow(self) -> Flow:
        if self.decoded is not None:
            return self.decoded
        assert self.raw is not None
        table, fam, kb, vb = self.raw
        return table.decode_raw(fam, kb, vb)

    @property
    def proto(self) -> int:
        return self.flow.key.proto

    @property
    def tunnel_id(self) -> int:
        return self.flow.tunnel_id

    @property
    def initiator(self) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
        i = self.flow.initiator
        return self.flow.key.addr[i], self.flow.key.port[i]

    @property
    def responder(self) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
        i = 1 - self.flow.initiator
        return self.flow.key.addr[i], self.flow.key.port[i]

    @property
    def bytes(self) -> tuple[int, int]:
        i = self.flow.initiator
        return self.flow.bytes[i], self.flow.bytes[1 - i]

    @property
    def packets(self) -> tuple[int, int]:
        i = self.flow.initiator
        return self.flow.packets[i], self.flow.packets[1 - i]
