"""Files for flowpin on real gateways (the Vagrant VMs), rendered from the lab's definitions.

One entry point writes everything a node of the Vagrant topology needs, below ``--out``
(which stands for ``/etc``)::

    python -m lab.deploy render --node bo-gw --out /etc [--lan-if auto]

* ``swanctl/conf.d/flowpin-site.conf``: the lab's connection
  (:func:`lab.lab.conn_for`) rendered by
  :meth:`vici_glue.conns.SiteToSite.swanctl_conf`; charon-systemd loads it at start
  (``swanctl --load-all`` in strongswan.service). Gateways only.
* ``strongswan.d/flowpin.conf``: charon's timers (the lab's short DPD) and the kernel's XFRM
  IPsec backend (kernel-netlink; kernel-libipsec explicitly off). Gateways only.
* ``flowpin/flowpin.toml``: the daemon's configuration (preserve-vpn-flows on, the LAN NIC,
  charon-systemd's VICI socket). Gateways only.
* ``sysctl.d/90-flowpin.conf``: forwarding. Gateways only.
* ``flowpin/net.sh``: the node's IPv6 addresses and its routes to the other networks. Vagrant
  gives each private network NIC its IPv4 address; interface names differ per provider
  (``eth1``, ``enp0s8`` …), so NICs are found by the lab IPv4 address they carry.

Addresses come from :mod:`lab.topology` only; ``topology`` prints the JSON the
Vagrantfile reads (``vagrant/topology.json``, checked to be up to date by the tests).

Hosts (bo-client, ho-server) have no venv: this module imports only the standard library
and the topology at module level.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from lab import topology
from lab.topology import GATEWAYS, LINKS, NODES

SWANCTL_FILE = "swanctl/conf.d/flowpin-site.conf"
FLOWPIN_FILE = "flowpin/flowpin.toml"
STRONGSWAN_FILE = "strongswan.d/flowpin.conf"
SYSCTL_FILE = "sysctl.d/90-flowpin.conf"
NET_FILE = "flowpin/net.sh"
VICI_SOCKET = "/var/run/charon.vici"  # charon-systemd's default
PSK_ENV = "FLOWPIN_PSK"

# charon.* settings of a deployed gateway: the lab's timers (see
# lab.charon.config_text), so that an IKEv2 peer is declared dead after ~5 s of
# silence following a DPD probe. The deploy test runs the lab's charons with these.
CHARON_TIMERS = {
    "retransmit_timeout": "1.0",
    "retransmit_base": "1.4",
    "retransmit_tries": "2",
}


class DeployError(RuntimeError):
    """Cannot render: the message says why (unknown node, NIC not found, bad PSK)."""


@dataclasses.dataclass(frozen=True)
class Nic:
    """One NIC of a node: the network it is on and its lab addresses (first is IPv4)."""

    net: str
    lab_ifname: str
    addrs: tuple[str, ...]

    @property
    def ipv4(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.addrs[0])


def _net_name(link: topology.Link) -> str:
    if {link.a, link.b} == set(GATEWAYS):
        return "wan"
    gw = link.a if link.a in GATEWAYS else link.b
    return f"{gw.split('-')[0]}-lan"


def nics(node: str) -> list[Nic]:
    if node not in NODES:
        raise DeployError(f"unknown node {node!r}: one of {', '.join(NODES)}")
    out = []
    for link in LINKS:
        if link.a == node:
            out.append(Nic(_net_name(link), link.a_if, link.a_addrs))
        elif link.b == node:
            out.append(Nic(_net_name(link), link.b_if, link.b_addrs))
    return out


def lan_nic(gw: str) -> Nic:
    return next(n for n in nics(gw) if n.lab_ifname == topology.LAN_IF)


def routes(node: str) -> list[tuple[str, str]]:
    """(prefix, via) for every lab network the node is not on, through its lab default
    gateway. The VM keeps Vagrant's default route (management NIC) for apt and ssh."""
    on = {str(ipaddress.ip_interface(a).network) for n in nics(node) for a in n.addrs}
    gw4, gw6 = topology.DEFAULT_ROUTES[node]
    out = []
    for prefix in (*topology.BO_LAN, *topology.WAN, *topology.HO_LAN):
        if prefix in on:
            continue
        via = gw4 if ipaddress.ip_network(prefix).version == 4 else gw6
        out.append((prefix, via))
    return out


def topology_json() -> dict:
    """What the Vagrantfile needs: nodes, their role and NICs (network, IPv4, netmask)."""
    nodes = {}
    for node in NODES:
        nodes[node] = {
            "role": "gateway" if node in GATEWAYS else "host",
            "nics": [{"net": n.net, "ipv4": str(n.ipv4.ip), "netmask": str(n.ipv4.netmask),
                      "addrs": list(n.addrs)} for n in nics(node)],
        }
    return {"generated-by": "python -m lab.deploy topology", "nodes": nodes}


# --- NIC discovery -----------------------------------------------------------------------
def find_nic(ipv4: str) -> str | None:
    """The interface carrying ``ipv4`` on this machine (``ip -j addr``), or None."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            if a.get("local") == ipv4:
                return link.get("ifname")
    return None


# --- renderers -----------------------------------------------------------------------------
def swanctl_text(gw: str, psk: str) -> str:
    from lab.lab import conn_for  # gateways only (needs the venv)

    conn = conn_for(gw)
    # The VMs boot with the tunnel up: the branch office initiates when charon starts
    # (strongswan.service's `swanctl --load-all`); otherwise exactly the lab's connection.
    start = "start" if gw == topology.BO_GW else conn.start_action
    return dataclasses.replace(conn, psk=psk, start_action=start).swanctl_conf()


def strongswan_text() -> str:
    timers = [f"    {k} = {v}" for k, v in CHARON_TIMERS.items()]
    # Included at the top level of strongswan.conf (strongswan.d/*.conf), after charon.conf.
    # charon-systemd reads the charon section as its fallback.
    return "\n".join([
        "# Written by flowpin (python -m lab.deploy): charon on a flowpin gateway.",
        "charon {",
        *timers,
        "    install_virtual_ip = no",
        "    plugins {",
        "        # The kernel's XFRM IPsec, never the userspace ESP of kernel-libipsec.",
        "        kernel-netlink {",
        "            load = yes",
        "        }",
        "        kernel-libipsec {",
        "            load = no",
        "        }",
        "    }",
        "}",
        "",
    ])


def flowpin_text(lan_if: str, vici_socket: str = VICI_SOCKET, instance: str = "default",
                 control_socket: str = "") -> str:
    return "\n".join([
        "# Written by flowpin (python -m lab.deploy). Every key is documented in",
        "# controlplane/flowpin.example.toml. Reload: systemctl reload flowpin",
        "[sysopt]",
        "preserve-vpn-flows = true",
        "reclassify-vpn = true",
        "",
        "[vici]",
        f"socket = {json.dumps(vici_socket)}",
        "",
        "[datapath]",
        f"instance = {json.dumps(instance)}",
        f"lan-interfaces = [{json.dumps(lan_if)}]",
        "",
        "[demand]",
        "initiate = true",
        "backoff-min = 1",
        "backoff-max = 10",
        "",
        "[control]",
        f"socket = {json.dumps(control_socket)}",
        "",
    ])


def sysctl_text() -> str:
    return ("# Written by flowpin: a gateway forwards.\n"
            "net.ipv4.ip_forward = 1\n"
            "net.ipv6.conf.all.forwarding = 1\n")


def net_text(node: str) -> str:
    """A POSIX shell script that gives the node its lab addresses and routes. Idempotent;
    run by flowpin-net.service at boot."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        f"# Written by flowpin (python -m lab.deploy): {node}'s lab addressing.",
        "# NICs are found by the IPv4 address Vagrant gave them (names differ per provider).",
        "set -eu",
        "nic_with() { ip -o -4 addr show | awk -v a=\"$1\" "
        "'{split($4, p, \"/\"); if (p[1] == a) {print $2; exit}}'; }",
    ]
    for n in nics(node):
        ip4 = str(n.ipv4.ip)
        var = "nic_" + n.net.replace("-", "_")
        lines += [
            f"{var}=$(nic_with {ip4})",
            f"[ -n \"${var}\" ] || {{ echo \"net.sh: no NIC carries {ip4} ({n.net})\" >&2; "
            "exit 1; }",
            f"ip link set dev \"${var}\" up",
        ]
        for addr in n.addrs[1:]:
            fam = "-6" if ipaddress.ip_interface(addr).version == 6 else "-4"
            extra = " nodad" if fam == "-6" else ""
            lines.append(f"ip {fam} addr replace {q(addr)} dev \"${var}\"{extra}")
    for prefix, via in routes(node):
        fam = "-6" if ipaddress.ip_network(prefix).version == 6 else "-4"
        lines.append(f"ip {fam} route replace {q(prefix)} via {q(via)}")
    lines.append("")
    return "\n".join(lines)


def files(node: str, *, psk: str = "", lan_if: str = "", vici_socket: str = VICI_SOCKET,
          instance: str = "default", control_socket: str = "") -> dict[str, tuple[str, int]]:
    """path below /etc -> (text, mode) for one node."""
    out = {NET_FILE: (net_text(node), 0o755)}
    if node in GATEWAYS:
        if not lan_if:
            raise DeployError(f"{node}: the LAN interface name is needed (--lan-if)")
        if not psk:
            raise DeployError(f"{node}: no pre-shared key (set {PSK_ENV}, or --psk-file)")
        out[SWANCTL_FILE] = (swanctl_text(node, psk), 0o600)
        out[STRONGSWAN_FILE] = (strongswan_text(), 0o644)
        out[FLOWPIN_FILE] = (flowpin_text(lan_if, vici_socket, instance, control_socket),
                             0o644)
        out[SYSCTL_FILE] = (sysctl_text(), 0o644)
    return out


def render(node: str, out: Path, **kw: str) -> list[Path]:
    written = []
    for rel, (text, mode) in files(node, **kw).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        tmp.replace(path)
        written.append(path)
    return written


# --- CLI ---------------------------------------------------------------------------------
def _psk(args: argparse.Namespace) -> str:
    if args.psk_file:
        return Path(args.psk_file).read_text().strip()
    return os.environ.get(PSK_ENV, "").strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.deploy", description=__doc__
                                .split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write a node's files below --out (stands for /etc)")
    r.add_argument("--node", required=True, choices=NODES)
    r.add_argument("--out", help="directory standing for /etc")
    r.add_argument("--print", action="store_true", help="print the files, write nothing")
    r.add_argument("--lan-if", default="auto",
                   help="the gateway's LAN NIC; auto: the NIC carrying its lab LAN address")
    r.add_argument("--psk-file", help=f"pre-shared key file (default: ${PSK_ENV})")
    r.add_argument("--vici-socket", default=VICI_SOCKET)
    r.add_argument("--instance", default="default")
    r.add_argument("--control-socket", default="")
    sub.add_parser("topology", help="print the topology JSON the Vagrantfile reads")
    args = p.parse_args(argv)
    if args.cmd == "topology":
        print(json.dumps(topology_json(), indent=2))
        return 0
    if not args.out and not args.print:
        p.error("render: --out DIR or --print")
    try:
        lan_if = ""
        if args.node in GATEWAYS:
            lan_if = args.lan_if
            if lan_if == "auto":
                # --print probes nothing: it shows what a real run would look for.
                want = str(lan_nic(args.node).ipv4.ip)
                lan_if = f"<NIC carrying {want}>" if args.print else find_nic(want) or ""
                if not lan_if:
                    raise DeployError(f"no interface carries {want} (the {args.node} LAN "
                                      "address): did Vagrant configure the private networks?")
        # --print never shows a key: it stands for the one the real run reads.
        psk = f"<${PSK_ENV}>" if args.print else _psk(args)
        kw = {"psk": psk, "lan_if": lan_if, "vici_socket": args.vici_socket,
              "instance": args.instance, "control_socket": args.control_socket}
        if args.print:
            for rel, (text, mode) in files(args.node, **kw).items():
                print(f"--- /etc/{rel} (mode {mode:04o})\n{text}", end="")
            return 0
        for path in render(args.node, Path(args.out), **kw):
            print(f"deploy: wrote {path}")
    except (DeployError, OSError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
