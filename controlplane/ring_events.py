"""Records of the data path's event ring: demand on a DOWN tunnel, table full, the non-VPN
budget reached, flows removed on the packet path, cleartext stopped by the WAN guard."""

from __future__ import annotations

import ctypes
import operator
from dataclasses import dataclass
from typing import Any

from controlplane.addresses import from_words, port
from controlplane.flow_types import EventType
from controlplane.flows import FLOW_VALUE_FIELDS, Flow, FlowKey, flow_of
from controlplane.layout import layout

_NAMES = {t.value: t.name for t in EventType}


@dataclass(frozen=True)
class Event:
    type: str  # DEMAND, MAP_FULL, FLOW_REMOVED
    tunnel_id: int
    key: FlowKey
    ts_ns: int
    flow: Flow | None  # FLOW_REMOVED: the flow as it was when removed


class EventDecoder:
    """Ring records as :class:`Event` s: one :mod:`struct` unpack a record, in the layout
    bcc read from the C (``ctype``: its ctypes of struct fp_event; see layout.py). Walking
    the ctypes fields of each record was over a third of what a record cost the daemon
    (with its teardown line), and a gateway tearing down 10,000 flows a second (a reused
    port replaces a closed flow) reads 10,000 records a second."""

    def __init__(self, ctype: Any) -> None:
        lay = layout(ctype)
        self._unpack = lay.struct.unpack
        self._size = ctypes.sizeof(ctype)
        i = lay.index
        self._head = operator.itemgetter(i("type"), i("tunnel_id"), i("family"), i("proto"),
                                         i("port[0]"), i("port[1]"), i("ts_ns"))
        self._addr = (i("addr[0].w[0]"), i("addr[1].w[0]"))
        self._flow = operator.itemgetter(*(i(f"flow.{f}") for f in FLOW_VALUE_FIELDS))

    def __call__(self, data: Any) -> Event:
        """The Event of the record at ``data`` (the pointer bcc's ring callback gets)."""
        v = self._unpack(ctypes.string_at(data, self._size))
        kind, tunnel_id, family, proto, port0, port1, ts_ns = self._head(v)
        a, b = self._addr
        addrs = (from_words(v[a:a + 4], family), from_words(v[b:b + 4], family))
        key = FlowKey(proto, addrs, (port(port0), port(port1)))
        flow = flow_of(key, *self._flow(v)) if kind == EventType.FLOW_REMOVED else None
        return Event(_NAMES.get(kind) or f"UNKNOWN_{kind}", tunnel_id, key, ts_ns, flow)
