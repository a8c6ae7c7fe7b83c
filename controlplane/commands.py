"""What the daemon answers on its control socket: one ``cmd_<name>`` per CLI command.

Each runs on the daemon's main loop (the only thread that touches the maps) and returns
plain JSON-able data; :mod:`controlplane.show` renders it as the ASA prints it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from controlplane.flow_table import Flow, Side
from controlplane.messages import Msg, Sev, emit, teardown_line
from controlplane.sweeper import RemovedFlow, format_duration

if TYPE_CHECKING:
    from controlplane.daemon import Daemon

PROTO = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMP6"}


def run(d: Daemon, kind: str, args: Any) -> Any:
    """Dispatch ``kind`` (``show-conn`` -> :func:`cmd_show_conn`)."""
    handler = globals().get("cmd_" + kind.replace("-", "_"))
    if handler is None or not callable(handler):
        raise ValueError(f"unknown command {kind!r}")
    return handler(d, args)


def _now_s(d: Daemon) -> int:
    assert d.sweeper is not None
    return d.sweeper.now_s()


def _flow_flags(f: Flow, pinned: bool) -> str:
    """ASA-like letters: U up (established), O outbound data, I inbound data, f inside FIN,
    r outside FIN, R reset, s embryonic, P picked up mid-stream; then PINNED."""
    lan = f.lan_side if f.lan_side is not None else f.initiator
    far = 1 - lan
    flags = ""
    if f.key.proto == 6:
        state = f.tcp_state
        if state in ("ESTABLISHED", "HALF_CLOSED"):
            flags += "U"
        elif state in ("SYN_SENT", "SYN_RECV"):
            flags += "s"
        if (f.side[0] | f.side[1]) & Side.PICKUP:
            flags += "P"
        if f.side[lan] & Side.FIN:
            flags += "f"
        if f.side[far] & Side.FIN:
            flags += "r"
        if (f.side[0] | f.side[1]) & Side.RST:
            flags += "R"
    if f.bytes[lan]:
        flags += "O"
    if f.bytes[far]:
        flags += "I"
    return flags + (" PINNED" if pinned else "")


def _tunnels(d: Daemon) -> dict[int, Any]:
    assert d.table is not None
    return {t.id: t for t in d.table.tunnels()}


def _is_pinned(f: Flow, tunnels: dict[int, Any]) -> bool:
    t = tunnels.get(f.tunnel_id)
    return bool(f.tunnel_id and t and not t.up and t.preserve and f.key.proto == 6
                and f.generation == t.generation)


def _conn_row(d: Daemon, f: Flow, tunnels: dict[int, Any], now: int) -> dict[str, Any]:
    lan = f.lan_side if f.lan_side is not None else f.initiator
    far = 1 - lan
    reg = d.registry.by_id(f.tunnel_id)
    pinned = _is_pinned(f, tunnels)
    t = tunnels.get(f.tunnel_id)
    return {
        "protocol": PROTO.get(f.key.proto, str(f.key.proto)),
        "outside": {"address": str(f.key.addr[far]), "port": f.key.port[far]},
        "inside": {"address": str(f.key.addr[lan]), "port": f.key.port[lan]},
        "initiator": "inside" if f.initiator == lan else "outside",
        "state": f.tcp_state,
        "idle_s": max(0, now - f.last_s),
        "duration_s": max(0, now - f.created_s),
        "bytes": sum(f.bytes),
        "bytes_out": f.bytes[lan],
        "bytes_in": f.bytes[far],
        "packets": sum(f.packets),
        "flags": _flow_flags(f, pinned),
        "pinned": pinned,
        "stale": bool(f.tunnel_id and t and f.generation != t.generation),
        "tunnel_id": f.tunnel_id,
        "tunnel": reg.name if reg else ("-" if f.tunnel_id == 0 else f"#{f.tunnel_id}"),
    }


def _match_tunnel(d: Daemon, name: str | None) -> int | None:
    if not name:
        return None
    for t in d.registry.tunnels.values():
        if name in (t.name, t.key[0], str(t.tunnel_id)):
            return t.tunnel_id
    raise ValueError(f"no tunnel {name!r} (see: flowpin show vpn-context)")


def cmd_show_conn(d: Daemon, a: dict[str, Any]) -> dict[str, Any]:
    assert d.table is not None
    tid = _match_tunnel(d, a.get("tunnel"))
    tunnels = _tunnels(d)
    now = _now_s(d)
    rows = []
    total = 0
    for f in d.table.flows():
        total += 1
        if tid is not None and f.tunnel_id != tid:
            continue
        row = _conn_row(d, f, tunnels, now)
        if a.get("pinned") and not row["pinned"]:
            continue
        rows.append(row)
    rows.sort(key=lambda r: (r["tunnel"], r["protocol"], r["inside"]["address"],
                             r["inside"]["port"]))
    return {"in_use": total, "shown": len(rows), "connections": rows}


def _tunnel_row(d: Daemon, t: Any, tunnels: dict[int, Any], flows: list[Flow],
                guard: dict[int, tuple[int, int]]) -> dict:
    dt = tunnels.get(t.tunnel_id)
    guard_out, guard_in = guard.get(t.tunnel_id, (0, 0))
    mine = [f for f in flows if f.tunnel_id == t.tunnel_id]
    gen = dt.generation if dt else 0
    active = [f for f in mine if f.generation == gen]
    pinned = [f for f in active if _is_pinned(f, tunnels)]
    child = t.newest()
    return {
        "id": t.tunnel_id,
        "tunnel": t.name,
        "conn": t.key[0],
        "child": t.key[1],
        "peer": t.peer_id,
        "peer_host": t.peer_host,
        "state": t.state,
        "datapath_state": dt.state if dt else "-",
        "preserve": d.preserve_for(t.key),
        "generation": gen,
        "since": t.since,
        "spi_in": child.spi_in if child else "",
        "spi_out": child.spi_out if child else "",
        "child_sas": len(t.children),
        "local_ts": [str(n) for n in t.local_ts],
        "remote_ts": [str(n) for n in t.remote_ts],
        "flows": len(active),
        "pinned": len(pinned),
        "held_packets": dt.held if dt else 0,
        "refused": dt.refused if dt else 0,
        "cleartext_dropped_out": guard_out,
        "cleartext_dropped_in": guard_in,
        "missing_since": t.missing_since or None,
        "ups": t.ups,
        "downs": t.downs,
        "demand": ({"attempts": dm.attempts, "last_error": dm.last_error}
                   if (dm := d.demand.get(t.key)) else None),
    }


def cmd_show_vpn_context(d: Daemon, a: dict[str, Any]) -> dict[str, Any]:
    assert d.table is not None
    tunnels = _tunnels(d)
    flows = list(d.table.flows())
    guard = d.table.guard_counts()
    rows = [_tunnel_row(d, t, tunnels, flows, guard)
            for t in sorted(d.registry.tunnels.values(), key=lambda t: t.tunnel_id)]
    return {"charon": "connected" if d.charon_up else "unreachable",
            "ipsec_backend": d.ipsec_backend, "tunnels": rows}


def cmd_show_sysopt(d: Daemon, a: dict[str, Any]) -> dict[str, Any]:
    per = dict(d.runtime.get("preserve_tunnels", {}))
    for t in d.cfg.tunnels:
        if t.preserve_vpn_flows is not None:
            per.setdefault(f"{t.conn}/{t.child}", t.preserve_vpn_flows)
    return {
        "preserve_vpn_flows": bool(d.runtime.get("preserve_vpn_flows",
                                                 d.cfg.preserve_vpn_flows)),
        "reclassify_vpn": d.reclassify(),
        "preserve_tunnels": per,
        "timeouts": {k: format_duration(v) for k, v in vars(d.cfg.timeouts).items()},
        "config": d.cfg.path,
    }


def cmd_sysopt(d: Daemon, a: dict[str, Any]) -> dict[str, Any]:
    option, on, tunnel = a.get("option"), bool(a.get("on")), a.get("tunnel")
    if option == "preserve-vpn-flows":
        if tunnel:
            t_id = _match_tunnel(d, tunnel)
            t = d.registry.by_id(t_id or 0)
            assert t is not None
            d.runtime.setdefault("preserve_tunnels", {})[t.name] = on
        else:
            d.runtime["preserve_vpn_flows"] = on
    elif option == "reclassify-vpn":
        if tunnel:
            raise ValueError("reclassify-vpn is global (no --tunnel)")
        d.runtime["reclassify_vpn"] = on
    else:
        raise ValueError(f"unknown sysopt {option!r}")
    d._save_runtime()
    d.apply_sysopt()
    emit(Sev.NOTICE, Msg.SYSOPT_CHANGED, f"{'' if on else 'no '}sysopt connection {option}"
         + (f" tunnel {tunnel}" if tunnel else "") + " (takes effect now, on tunnels already "
         "up too)")
    return cmd_show_sysopt(d, {})


def cmd_clear_conn(d: Daemon, a: dict[str, Any]) -> dict[str, Any]:
    """``clear conn [--tunnel T] [--address A] [--port P] [--protocol tcp|udp|icmp]``."""
    assert d.table is not None
    tid = _match_tunnel(d, a.get("tunnel"))
    addr = ipaddress.ip_address(a["address"]) if a.get("address") else None
    port = int(a["port"]) if a.get("port") else None
    proto = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58}.get(str(a.get("protocol", "")).lower())
    if a.get("protocol") and proto is None:
        raise ValueError(f"unknown protocol {a['protocol']!r}")
    now = _now_s(d)
    cleared = 0
    for f in list(d.table.flows()):
        if tid is not None and f.tunnel_id != tid:
            continue
        if addr is not None and addr not in f.key.addr:
            continue
        if port is not None and port not in f.key.port:
            continue
        if proto is not None and f.key.proto != proto:
            continue
        if d.table.delete_flow(f.key):
            cleared += 1
            r = RemovedFlow("Flow cleared by admin", float(max(0, now - f.created_s)), decoded=f)
            d.stats["teardowns_logged"] += 1
            logging.getLogger("flowpin").info(teardown_line(
                r, lan_if=d._lan_name(), tunnel_if=d._tunnel_name(f.tunnel_id)))
    return {"cleared": cleared}


def cmd_show_counters(d: Daemon, a: dict[str, Any]) -> dict[str, Any]:
    assert d.table is not None
    lat = sorted(d.latency.samples)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

    return {"datapath": d.table.counters(), "daemon": dict(d.stats),
            "event_to_map_ms": {"count": len(lat), "p50": pct(0.5), "p99": pct(0.99),
                                "max": round(lat[-1], 3) if lat else None},
            "flows": d.table.flow_count(), "flow_table_size": d.cfg.flow_table_size,
            "nonvpn": {str(fam): {"flows": d.table.nonvpn_flows(fam),
                                  "limit": d.table.nonvpn_limit(fam)} for fam in (4, 6)},
            "uptime_s": round(time.time() - d.started, 1)}


def cmd_metrics(d: Daemon, a: dict[str, Any]) -> dict[str, Any]:
    out = cmd_show_counters(d, a)
    out["tunnels"] = cmd_show_vpn_context(d, a)["tunnels"]
    out["charon_up"] = d.charon_up
    out["ipsec_backend"] = d.ipsec_backend
    out["event_to_map_seconds"] = d.latency.histogram()
    return out


def cmd_reload(d: Daemon, path: Any) -> dict[str, Any]:
    d.reload(str(path or d.cfg.path))
    return cmd_show_sysopt(d, {})


def cmd_status(d: Daemon, a: dict[str, Any]) -> dict[str, Any]:
    return {"instance": d.cfg.instance, "config": d.cfg.path, "charon_up": d.charon_up,
            "ipsec_backend": d.ipsec_backend, "vici_socket": d.cfg.vici_socket,
            "lan_interfaces": list(d.cfg.lan_interfaces), "wan_guard": list(d.wan_guarded),
            "pid": os.getpid()}
