"""The lab's topology, after the network diagram of Cisco's preserve-vpn-flows document.

    bo-client ── bo-gw ════ WAN ════ ho-gw ── ho-server
    10.1.0.10    10.1.0.1   192.0.2.1/.2  10.2.0.1   10.2.0.10
    fd01::10     fd01::1    2001:db8::1/::2  fd02::1  fd02::10

Each node is a network namespace named ``fplab-<lab>-<node>``; the prefix lets ``lab down``
find leftovers of a lab that crashed. Gateways route everything they do not know to the
other gateway over the WAN (as an ISP default route would), so traffic for the far LAN that
is *not* caught by IPsec leaves in cleartext: exactly the leak flowpin must prevent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "fplab-"
NAME_RE = re.compile(r"^[a-z0-9]{1,12}$")

CLIENT, BO_GW, HO_GW, SERVER = "bo-client", "bo-gw", "ho-gw", "ho-server"
NODES = (CLIENT, BO_GW, HO_GW, SERVER)
GATEWAYS = (BO_GW, HO_GW)
HOSTS = (CLIENT, SERVER)

# IKE connection and CHILD_SA names, as loaded into both charons.
CONN = "site"
CHILD = "lan"

BO_LAN = ("10.1.0.0/24", "fd01::/64")
HO_LAN = ("10.2.0.0/24", "fd02::/64")
WAN = ("192.0.2.0/24", "2001:db8::/64")


@dataclass(frozen=True)
class Link:
    """A veth pair between two nodes, each end with its name and addresses."""

    a: str
    a_if: str
    a_addrs: tuple[str, ...]
    b: str
    b_if: str
    b_addrs: tuple[str, ...]


LINKS = (
    Link(CLIENT, "eth0", ("10.1.0.10/24", "fd01::10/64"), BO_GW, "lan0",
         ("10.1.0.1/24", "fd01::1/64")),
    Link(BO_GW, "wan0", ("192.0.2.1/24", "2001:db8::1/64"), HO_GW, "wan0",
         ("192.0.2.2/24", "2001:db8::2/64")),
    Link(HO_GW, "lan0", ("10.2.0.1/24", "fd02::1/64"), SERVER, "eth0",
         ("10.2.0.10/24", "fd02::10/64")),
)

# Default routes per node: (IPv4 gateway, IPv6 gateway).
DEFAULT_ROUTES = {
    CLIENT: ("10.1.0.1", "fd01::1"),
    BO_GW: ("192.0.2.2", "2001:db8::2"),
    HO_GW: ("192.0.2.1", "2001:db8::1"),
    SERVER: ("10.2.0.1", "fd02::1"),
}

WAN_ADDR = {BO_GW: "192.0.2.1", HO_GW: "192.0.2.2"}
LAN_IF = "lan0"
WAN_IF = "wan0"
PEER = {BO_GW: HO_GW, HO_GW: BO_GW}
LOCAL_TS = {BO_GW: BO_LAN, HO_GW: HO_LAN}
HOST_ADDR = {CLIENT: ("10.1.0.10", "fd01::10"), SERVER: ("10.2.0.10", "fd02::10")}


def ns_name(lab: str, node: str) -> str:
    return f"{PREFIX}{lab}-{node}"


def check_name(lab: str) -> str:
    if not NAME_RE.match(lab):
        raise ValueError(f"lab name {lab!r}: use 1-12 lowercase letters or digits")
    return lab
