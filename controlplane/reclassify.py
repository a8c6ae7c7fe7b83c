"""reclassify-vpn: clear flows created outside a tunnel that now covers them.

When a tunnel comes up, flows that were tracked as non-VPN (tunnel 0) while it was not
there -- a connection opened in cleartext, or one that got NAT while the tunnel was down --
would stay outside it. Like the ASA's ``sysopt connection reclassify-vpn``, flowpin clears
them, from its own flow table and from netfilter's conntrack (through pyroute2), so that
their next packets are classified again, into the tunnel.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from controlplane.flow_table import FlowTable
from controlplane.flows import FlowKey

log = logging.getLogger("flowpin")
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _covers(local: Iterable[Net], remote: Iterable[Net], a: Any, b: Any) -> bool:
    return any(a in ln for ln in local) and any(b in rn for rn in remote)


def matches(key: FlowKey, local: Iterable[Net], remote: Iterable[Net]) -> bool:
    """Whether a flow's two ends fall in the tunnel's selectors (either direction)."""
    lo, re_ = list(local), list(remote)
    a, b = key.addr
    return _covers(lo, re_, a, b) or _covers(lo, re_, b, a)


def clear_conntrack(local: Iterable[Net], remote: Iterable[Net]) -> int:
    """Delete conntrack entries between the selectors (this namespace). Returns how many."""
    try:
        from pyroute2 import Conntrack
    except ImportError:  # pragma: no cover - pyroute2 always has it
        return 0
    lo, re_ = list(local), list(remote)
    n = 0
    try:
        ct = Conntrack()
    except OSError as exc:
        log.warning("reclassify-vpn: conntrack not reachable: %s", exc)
        return 0
    try:
        for entry in list(ct.dump_entries()):
            orig = entry.tuple_orig
            try:
                src = ipaddress.ip_address(orig.saddr)
                dst = ipaddress.ip_address(orig.daddr)
            except (TypeError, ValueError):
                continue
            if _covers(lo, re_, src, dst) or _covers(lo, re_, dst, src):
                try:
                    ct.delete(entry)
                    n += 1
                except Exception as exc:  # noqa: BLE001 -- raced with expiry
                    log.debug("conntrack delete %s: %s", orig, exc)
    except OSError as exc:
        log.warning("reclassify-vpn: reading conntrack: %s", exc)
    finally:
        ct.close()
    return n


def clear(table: FlowTable, local: Iterable[Net], remote: Iterable[Net]) -> tuple[int, int]:
    """Clear the non-VPN flows (flowpin's table) and conntrack entries a tunnel's selectors
    now cover; returns how many of each. Safe beside the loop: a flow deleted here is
    simply created again, in its tunnel, by its next packet.

    The table is walked a batch at a time and only the non-VPN flows' keys are decoded
    (their tunnel id read from the raw bytes): a tunnel coming UP among a million VPN
    flows does not decode them."""
    local, remote = list(local), list(remote)
    gone = 0
    for fam in (4, 6):
        lo = [n for n in local if n.version == fam]
        re_ = [n for n in remote if n.version == fam]
        if not lo or not re_:
            continue
        doomed: list[FlowKey] = []
        for keys, values, n in table.chunks(fam):
            for i, tid in enumerate(table.tunnel_ids_of(fam, values, n)):
                if tid == 0:
                    key = table.decode_key(fam, keys[i])
                    if matches(key, lo, re_):
                        doomed.append(key)
        gone += sum(1 for key in doomed if table.delete_flow(key))
    return gone, clear_conntrack(local, remote)
