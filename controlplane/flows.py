"""A flow as the control plane reads it from the flow maps: its canonical key, and what the
data path tracks (sides, sequence numbers, times, packets and bytes each way)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def decode_value(key: FlowKey, v: Any) -> Flow:
    """A Flow from its key and a raw flow_value."""
    mask = (1 << ACCT_BYTES_BITS) - 1
    return Flow(key, v.tunnel_id, v.generation, (v.side[0], v.side[1]),
                (v.seq[0], v.seq[1]), (v.ack[0], v.ack[1]), v.created_s, v.last_s,
                (v.acct[0] >> ACCT_BYTES_BITS, v.acct[1] >> ACCT_BYTES_BITS),
                (v.acct[0] & mask, v.acct[1] & mask))


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
