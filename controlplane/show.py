"""Text rendering of the ``show`` commands, in the shape ASA admins know."""

from __future__ import annotations

import time
from typing import Any

from controlplane.durations import format_duration


def vpn_context(data: dict[str, Any], detail: bool = False) -> str:
    """One line per SA direction, as ``show asp table vpn-context`` prints it::

        VPN CTX=0x00000002, Tunnel=site/lan, Peer=ho-gw, ENCR+ESP+PRESERVE, UP, SPI=0x…,
        flows=3, pinned=0, held=0
    """
    lines = []
    if data.get("charon") != "connected":
        lines.append("% charon unreachable: every tunnel is DOWN until it answers again")
    elif detail:
        lines.append(f"charon connected, IPsec backend {data.get('ipsec_backend', 'unknown')}")
    for t in data["tunnels"]:
        flags = "+PRESERVE" if t["preserve"] else ""
        for direction, spi, ctx in (("DECR", t["spi_in"], t["id"] * 2),
                                    ("ENCR", t["spi_out"], t["id"] * 2 + 1)):
            spi_txt = f"0x{spi}" if spi else "-"
            lines.append(f"VPN CTX=0x{ctx:08X}, Tunnel={t['tunnel']}, Peer={t['peer'] or '-'}, "
                         f"{direction}+ESP{flags}, {t['state']}, SPI={spi_txt}, "
                         f"flows={t['flows']}, pinned={t['pinned']}, held={t['held_packets']}")
        if detail:
            lines.append(f"    selectors {','.join(t['local_ts']) or '-'} === "
                         f"{','.join(t['remote_ts']) or '-'}; peer host "
                         f"{t['peer_host'] or '-'}; CHILD_SAs installed {t['child_sas']}")
            lines.append(f"    data path: id {t['id']}, state {t['datapath_state']}, "
                         f"generation {t['generation']}, refused {t['refused']}, dropped "
                         f"in clear by the WAN guard {t.get('cleartext_dropped_out', 0)} "
                         f"out / {t.get('cleartext_dropped_in', 0)} in; "
                         f"up {t['ups']} times, down {t['downs']} times")
            if "resume_kick" in t:
                lines.append(f"    resume kick {'on' if t['resume_kick'] else 'off'}: "
                             f"{t['kicked']} ICMP unreachables to held senders, "
                             f"{t['kicks_limited']} held segments over the kick limits")
            if t.get("demand"):
                d = t["demand"]
                lines.append(f"    demand: {d['attempts']} initiation attempts"
                             + (f", last error: {d['last_error']}" if d["last_error"] else ""))
    if not data["tunnels"]:
        lines.append("No VPN contexts (no tunnel configured in charon)")
    return "\n".join(lines)


def conn(data: dict[str, Any]) -> str:
    """``show conn``: a header line, then one line per connection."""
    return "\n".join([conn_summary(data), *(conn_line(c) for c in data["connections"])])


def conn_summary(data: dict[str, Any]) -> str:
    """The count line of ``show conn`` (printed last when the rows are streamed)."""
    more = " (limit reached: more match; see --limit)" if data.get("limited") else ""
    return f"{data['in_use']} in use, {data['shown']} shown{more}"


def conn_line(c: dict[str, Any]) -> str:
    """One connection of ``show conn``."""
    o, i = c["outside"], c["inside"]
    return (f"{c['protocol']} {c['tunnel']} {o['address']}:{o['port']} "
            f"inside {i['address']}:{i['port']}, idle "
            f"{format_duration(c['idle_s'])}, bytes {c['bytes']}, flags {c['flags']}"
            + (" (stale)" if c["stale"] else ""))


def sysopt(data: dict[str, Any]) -> str:
    """Like ``show run all sysopt``."""
    def opt(on: bool, text: str) -> str:
        return ("" if on else "no ") + "sysopt connection " + text

    lines = [opt(data["preserve_vpn_flows"], "preserve-vpn-flows"),
             opt(data["reclassify_vpn"], "reclassify-vpn")]
    for tunnel, on in sorted(data["preserve_tunnels"].items()):
        lines.append(opt(on, f"preserve-vpn-flows tunnel {tunnel}"))
    t = data["timeouts"]
    lines.append(f"timeout conn {t['conn']} half-closed {t['half_closed']} udp {t['udp']} "
                 f"icmp {t['icmp']}")
    lines.append(f"timeout embryonic {t['embryonic']} closed {t['closed']}")
    return "\n".join(lines)


def counters(data: dict[str, Any]) -> str:
    lines = [f"flows {data['flows']} of {data['flow_table_size']}, uptime "
             f"{format_duration(data['uptime_s'])}", "", "data path (packets by verdict):"]
    for k, v in data["datapath"].items():
        lines.append(f"  {k.lower():<24} {v}")
    lines += ["", "daemon:"]
    for k, v in data["daemon"].items():
        lines.append(f"  {k:<24} {v}")
    lat = data["event_to_map_ms"]
    if lat["count"]:
        lines.append(f"  event_to_map_ms          p50 {lat['p50']} p99 {lat['p99']} "
                     f"max {lat['max']} ({lat['count']} events)")
    return "\n".join(lines)


def status(data: dict[str, Any]) -> str:
    """``flowpin status``: a few lines an admin reads at a glance."""
    t = data["tunnels"]
    charon = (f"connected ({data['ipsec_backend']}, {data['vici_socket']})" if data["charon_up"]
              else f"UNREACHABLE at {data['vici_socket']}: every tunnel held DOWN")
    hooks = ", ".join(
        f"{h['interface']} ({h['role']}) " + ("attached" if h["attached"]
                                             else "MISSING " + "+".join(h["missing"]))
        for h in data["hooks"]) or "none"
    last = data.get("last_problem")
    attach = data.get("attach") or {}
    lines = [
        f"flowpin {data['version']}, instance {data['instance']}, pid {data['pid']}, "
        f"up {format_duration(data['uptime_s'])}",
        f"config:   {data['config']}",
        f"charon:   {charon}",
        f"tunnels:  {t['up']} of {t['total']} up",
        f"flows:    {data['flows']} of {data['flow_table_size']}, {data['held']} held",
        f"hooks:    {hooks}",
        f"attach:   {attach.get('probe') or attach.get('mode', 'unknown')}",
        "last problem: " + (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last['at']))}"
                            f" {last['line']}" if last else "none"),
    ]
    return "\n".join(lines)
