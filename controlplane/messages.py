"""Log lines in the ASA's form: ``%FLOWPIN-<severity>-<id>: <text>``.

Teardowns reuse the ASA's own message ids and wording (302014 TCP, 302016 UDP, 302021
ICMP), so that existing log parsers and habits carry over. flowpin's own events (pin,
resume, demand, reclassify, …) have ids of their own in the 7521xx range.
"""

from __future__ import annotations

import logging
import zlib
from enum import IntEnum

from controlplane import protocols
from controlplane.addresses import addr_text
from controlplane.durations import format_duration
from controlplane.flows import RemovedFlow

log = logging.getLogger("flowpin")


class Sev(IntEnum):
    """Syslog severities, as the ASA numbers them."""

    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7


_PY_LEVEL = {Sev.ALERT: logging.CRITICAL, Sev.CRITICAL: logging.CRITICAL,
             Sev.ERROR: logging.ERROR, Sev.WARNING: logging.WARNING,
             Sev.NOTICE: logging.WARNING, Sev.INFO: logging.INFO, Sev.DEBUG: logging.DEBUG}


class Msg(IntEnum):
    TEARDOWN_TCP = 302014
    TEARDOWN_UDP = 302016
    TEARDOWN_ICMP = 302021
    CLEARTEXT_RECEIVED = 402117  # the ASA's "Received a non-IPSec packet"
    TUNNEL_DOWN_PINNED = 752100
    TUNNEL_UP_RESUMED = 752101
    TUNNEL_DOWN_TORN = 752102
    PEER_CHANGED = 752103
    DEMAND_INITIATE = 752104
    INITIATE_FAILED = 752105
    RECLASSIFIED = 752106
    TABLE_FULL = 752107
    CONFIG_LOADED = 752108
    CONFIG_REJECTED = 752109
    CHARON_LOST = 752110
    CHARON_FOUND = 752111
    SYSOPT_CHANGED = 752112
    TUNNEL_CONFIGURED = 752113
    DAEMON = 752114
    SELECTORS_REFUSED = 752115
    HOOK_REATTACHED = 752116
    TUNNEL_REFUSED = 752117
    CLEARTEXT_BLOCKED = 752120
    WAN_GUARD = 752121
    NONVPN_BUDGET = 752122
    EVENTS_LOST = 752123


class LastProblem(logging.Handler):
    """Remembers the last line at WARNING or worse: what ``flowpin status`` shows as the
    last error, so an admin sees it without searching the journal."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: tuple[float, str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = (record.created, record.getMessage())


def line(sev: Sev, msg: Msg, text: str) -> str:
    return f"%FLOWPIN-{int(sev)}-{int(msg)}: {text}"


def emit(sev: Sev, msg: Msg, text: str) -> str:
    out = line(sev, msg, text)
    log.log(_PY_LEVEL[sev], out)
    return out


def conn_id(r: RemovedFlow) -> int:
    """A stable connection number for a flow (the ASA prints one): a hash of its key and
    creation time, so the same flow gets the same number in every line about it."""
    flow = r.flow
    k = flow.key
    raw = (f"{k.proto}|{addr_text(k.addr[0])}|{k.port[0]}|{addr_text(k.addr[1])}|"
           f"{k.port[1]}|{flow.created_s}")
    return zlib.crc32(raw.encode()) & 0x7FFFFFFF


def teardown_line(r: RemovedFlow, lan_if: str = "inside", tunnel_if: str = "outside") -> str:
    """``Teardown TCP connection <id> for <if>:<ip>/<port> to <if>:<ip>/<port> duration
    h:mm:ss bytes <n> <reason>`` -- the LAN end is named by ``lan_if``, the far end by
    ``tunnel_if``; the responder is printed first, as the ASA does. ICMP has the ASA's own
    302021 form instead (see :func:`icmp_teardown_text`)."""
    flow = r.flow
    key = flow.key
    if key.proto in protocols.ICMP_NUMBERS:
        return line(Sev.INFO, Msg.TEARDOWN_ICMP, icmp_teardown_text(r))
    # flows are TCP, UDP or ICMP echo: the data path tracks nothing else
    proto = protocols.teardown_label(key.proto)
    msg = Msg.TEARDOWN_TCP if key.proto == protocols.TCP else Msg.TEARDOWN_UDP
    lan_idx, opener = flow.lan_side, flow.initiator
    ends = []
    for idx in (1 - opener, opener):  # responder first
        iface = lan_if if idx == lan_idx else tunnel_if
        ends.append(f"{iface}:{addr_text(key.addr[idx])}/{key.port[idx]}")
    text = (f"Teardown {proto} connection {conn_id(r)} for {ends[0]} to {ends[1]} duration "
            f"{format_duration(r.duration_s)} bytes {sum(flow.bytes)} {r.reason}")
    return line(Sev.INFO, msg, text)


def icmp_teardown_text(r: RemovedFlow) -> str:
    """The ASA's 302021: ``Teardown ICMP connection for faddr F/0 gaddr G/id laddr L/id
    type T code C``. faddr is the far end (across the tunnel), laddr the LAN end; flowpin
    translates nothing, so gaddr is laddr. The only ICMP flows are echo conversations
    (errors travel with the flow they quote), keyed by the echo identifier; the type is the
    echo request of the flow's family as its opener sent it. The ASA prints no duration,
    bytes or reason here; flowpin adds them after, for the same reason as its other lines."""
    key, lan = r.flow.key, r.flow.lan_side
    far = 1 - lan
    echo_request = 8 if r.proto == 1 else 128
    return (f"Teardown ICMP connection for faddr {key.addr[far]}/0 gaddr "
            f"{key.addr[lan]}/{key.port[lan]} laddr {key.addr[lan]}/{key.port[lan]} "
            f"type {echo_request} code 0 duration {format_duration(r.duration_s)} "
            f"bytes {sum(r.bytes)} {r.reason}")
