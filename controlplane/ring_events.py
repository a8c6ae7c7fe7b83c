"""Records of the data path's event ring: demand on a DOWN tunnel, table full, the non-VPN
budget reached, flows removed on the packet path, cleartext stopped by the WAN guard."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from controlplane.addresses import from_words, port
from controlplane.flow_types import EventType
from controlplane.flows import Flow, FlowKey, decode_value


@dataclass(frozen=True)
class Event:
    type: str  # DEMAND, MAP_FULL, FLOW_REMOVED
    tunnel_id: int
    key: FlowKey
    ts_ns: int
    flow: Flow | None  # FLOW_REMOVED: the flow as it was when removed


def decode_event(layout: Any, data: Any) -> Event:
    """An :class:`Event` from one ring record (``layout``: bcc's ctypes of struct fp_event)."""
    e = ctypes.cast(data, ctypes.POINTER(layout)).contents
    fam = e.family
    addrs = (from_words(e.addr[0].w, fam), from_words(e.addr[1].w, fam))
    key = FlowKey(e.proto, addrs, (port(e.port[0]), port(e.port[1])))
    flow = decode_value(key, e.flow) if e.type == EventType.FLOW_REMOVED else None
    try:
        name = EventType(e.type).name
    except ValueError:
        name = f"UNKNOWN_{e.type}"
    return Event(name, e.tunnel_id, key, e.ts_ns, flow)
