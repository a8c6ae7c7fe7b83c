"""charon's SA events and SA listings, decoded into typed values.

VICI delivers nested dicts of ``bytes``; this module turns them into frozen dataclasses with
``str``, ``int`` and :mod:`ipaddress` networks, so nothing past ``vici_glue`` ever sees raw
VICI. The shapes follow what strongSwan 5.9 sends (recorded in ``tests/fixtures/vici``):

- ``ike-updown`` / ``child-updown``: ``{"up": "yes"?, <conn>: <IKE_SA with child-sas>}``;
  the key ``up`` is present only on up.
- ``ike-rekey``: ``{<conn>: {"old": <IKE_SA>, "new": <IKE_SA>}}``.
- ``child-rekey``: ``{<conn>: <IKE_SA with child-sas: {<name>: {"old": …, "new": …}}>}``.
- ``ike-update``: ``{<conn>: <IKE_SA>, "local-host": …, "remote-host": …}`` (address change).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from vici_glue.session import decode

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EventKind = Literal["ike-updown", "child-updown", "ike-rekey", "child-rekey", "ike-update"]
EVENT_KINDS: tuple[EventKind, ...] = ("ike-updown", "child-updown", "ike-rekey", "child-rekey",
                                      "ike-update")


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def parse_ts(items: Any) -> tuple[IPNetwork, ...]:
    """Traffic selectors as networks. A selector with a port or protocol restriction
    (``10.0.0.0/8[tcp/80]``) is kept by its address part only (flowpin binds flows by
    address). An address range, which strongSwan prints as ``a..b`` (a conn loaded with
    ``10.1.0.10-10.1.0.20`` lists as ``10.1.0.10..10.1.0.20``), becomes the fewest prefixes
    that cover exactly that range. Anything else raises ``ValueError`` naming the raw text:
    a selector that is guessed at could leave traffic of a tunnel uncovered."""
    out: list[IPNetwork] = []
    for raw in items or []:
        text = str(decode(raw)).split("[", 1)[0].strip()
        if not text or text == "dynamic":
            continue
        try:
            if ".." in text:
                lo, hi = (ipaddress.ip_address(x.strip()) for x in text.split("..", 1))
                if lo.version != hi.version or lo > hi:  # type: ignore[operator]
                    raise ValueError("not an ascending range of one family")
                out.extend(ipaddress.summarize_address_range(lo, hi))  # type: ignore[arg-type]
                continue
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValueError(f"traffic selector {decode(raw)!r}: {exc}") from None
    return tuple(out)


@dataclass(frozen=True)
class ChildSA:
    name: str
    uniqueid: int
    reqid: int
    state: str
    spi_in: str
    spi_out: str
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    install_time: int = 0
    rekey_time: int = 0
    life_time: int = 0
    protocol: str = "ESP"

    @classmethod
    def from_vici(cls, d: dict[str, Any], key: str = "") -> ChildSA:
        d = decode(d)
        return cls(
            name=d.get("name") or key.rsplit("-", 1)[0],
            uniqueid=_int(d.get("uniqueid")),
            reqid=_int(d.get("reqid")),
            state=d.get("state", ""),
            spi_in=d.get("spi-in", ""),
            spi_out=d.get("spi-out", ""),
            local_ts=parse_ts(d.get("local-ts")),
            remote_ts=parse_ts(d.get("remote-ts")),
            bytes_in=_int(d.get("bytes-in")),
            bytes_out=_int(d.get("bytes-out")),
            packets_in=_int(d.get("packets-in")),
            packets_out=_int(d.get("packets-out")),
            install_time=_int(d.get("install-time")),
            rekey_time=_int(d.get("rekey-time")),
            life_time=_int(d.get("life-time")),
            protocol=d.get("protocol", "ESP"),
        )


@dataclass(frozen=True)
class IkeSA:
    conn: str
    uniqueid: int
    state: str
    local_id: str
    remote_id: str
    local_host: str
    remote_host: str
    children: tuple[ChildSA, ...] = ()

    @classmethod
    def from_vici(cls, conn: str, d: dict[str, Any]) -> IkeSA:
        d = decode(d)
        kids = tuple(ChildSA.from_vici(c, k) for k, c in (d.get("child-sas") or {}).items()
                     if isinstance(c, dict) and "old" not in c)
        return cls(
            conn=conn,
            uniqueid=_int(d.get("uniqueid")),
            state=d.get("state", ""),
            local_id=d.get("local-id", ""),
            remote_id=d.get("remote-id", ""),
            local_host=d.get("local-host", ""),
            remote_host=d.get("remote-host", ""),
            children=kids,
        )


@dataclass(frozen=True)
class ChildRekey:
    old: ChildSA
    new: ChildSA


@dataclass(frozen=True)
class SAEvent:
    """One VICI SA event. ``ike`` is the IKE_SA it is about (for ``ike-rekey``, the new
    one, with ``old_ike`` the one it replaced); ``up`` is set for the up/down events."""

    kind: EventKind
    ike: IkeSA
    up: bool | None = None
    old_ike: IkeSA | None = None
    child_rekeys: tuple[ChildRekey, ...] = ()
    new_local_host: str = ""
    new_remote_host: str = ""


class EventFormatError(ValueError):
    """An event charon sent does not have the shape this module knows."""


def parse_event(kind: bytes | str, msg: dict[str, Any]) -> SAEvent:
    name = decode(kind)
    if name not in EVENT_KINDS:
        raise EventFormatError(f"unknown VICI event {name!r}")
    msg = decode(msg)
    up = (msg.get("up") == "yes") if name in ("ike-updown", "child-updown") else None
    sas = [(k, v) for k, v in msg.items() if isinstance(v, dict)]
    if len(sas) != 1:
        raise EventFormatError(f"{name}: expected one IKE_SA, got {len(sas)}")
    conn, body = sas[0]
    if name == "ike-rekey":
        if "old" not in body or "new" not in body:
            raise EventFormatError("ike-rekey without old/new")
        return SAEvent(name, IkeSA.from_vici(conn, body["new"]),
                       old_ike=IkeSA.from_vici(conn, body["old"]))
    ike = IkeSA.from_vici(conn, body)
    if name == "child-rekey":
        rekeys = tuple(
            ChildRekey(ChildSA.from_vici(c["old"], k), ChildSA.from_vici(c["new"], k))
            for k, c in (body.get("child-sas") or {}).items()
            if isinstance(c, dict) and "old" in c and "new" in c)
        return SAEvent(name, ike, child_rekeys=rekeys)
    if name == "ike-update":
        return SAEvent(name, ike, new_local_host=msg.get("local-host", ""),
                       new_remote_host=msg.get("remote-host", ""))
    return SAEvent(name, ike, up=up)  # type: ignore[arg-type]


def parse_sas(entries: list[dict[str, Any]]) -> list[IkeSA]:
    """``list-sas`` output (one dict per IKE_SA) as IkeSAs."""
    out = []
    for entry in entries:
        for conn, body in decode(entry).items():
            if isinstance(body, dict):
                out.append(IkeSA.from_vici(conn, body))
    return out


@dataclass(frozen=True)
class ChildConfig:
    """A configured CHILD_SA (from ``list-conns``): what flowpin binds flows to."""

    conn: str
    child: str
    remote_ids: tuple[str, ...]
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    dpd_action: str = ""
    start_action: str = ""


def parse_conns(entries: list[dict[str, Any]]) -> list[ChildConfig]:
    out = []
    for entry in entries:
        for conn, body in decode(entry).items():
            if not isinstance(body, dict):
                continue
            rids = tuple(v.get("id", "") for k, v in body.items()
                         if k.startswith("remote") and isinstance(v, dict))
            for child, c in (body.get("children") or {}).items():
                try:
                    out.append(ChildConfig(conn, child, rids, parse_ts(c.get("local-ts")),
                                           parse_ts(c.get("remote-ts")),
                                           c.get("dpd_action", ""), c.get("start_action", "")))
                except (ValueError, AttributeError, TypeError) as exc:
                    raise EventFormatError(f"list-conns {conn}/{child}: {exc}") from exc
    return out
