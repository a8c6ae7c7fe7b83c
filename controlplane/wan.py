"""Which interfaces are the gateway's WAN: where the guard (bpf/lib/guard.h) is attached.

Configured explicitly (``datapath.wan-interfaces``), or found from the routing table: the
interfaces of the default routes (IPv4 and IPv6), and of the route towards each tunnel's
peer as tunnels come up. A cleartext leak follows the main table -- through the default
route, or the route to the peer when there is none -- so those are the exits to guard.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute


def _ifname(ipr: IPRoute, index: int) -> str | None:
    links = ipr.get_links(index)
    return links[0].get_attr("IFLA_IFNAME") if links else None


def default_route_interfaces() -> list[str]:
    """Interfaces of the default routes of the main table, IPv4 then IPv6, without repeats."""
    found: list[str] = []
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_default_routes(family=family, table=254):
                oifs = [route.get_attr("RTA_OIF")]
                multipath = route.get_attr("RTA_MULTIPATH") or []
                oifs += [hop["oif"] for hop in multipath if "oif" in hop]
                for oif in oifs:
                    name = _ifname(ipr, oif) if oif else None
                    if name and name not in found:
                        found.append(name)
    return found


def route_interface(addr: str) -> str | None:
    """The interface the kernel routes ``addr`` through (``ip route get``), or None."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=addr)
        except Exception:  # noqa: BLE001 -- unreachable: no interface to name
            return None
        for r in routes:
            oif = r.get_attr("RTA_OIF")
            if oif:
                return _ifname(ipr, oif)
    return None
