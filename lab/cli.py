"""``flowpin lab …`` and ``flowpin demo``: the lab's subcommands.

They reach the ``flowpin`` command through the ``flowpin.subcommands`` entry point, so the
product's CLI never imports the lab: a gateway install without it simply has no ``lab``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from controlplane.cli import CliError, print_result

DEFAULT_LAB = os.environ.get("FLOWPIN_LAB", "flowpin")


def _lab_status_text(st: dict[str, Any]) -> str:
    lines = [f"lab {st['name']}: IPsec backend {st['backend']} ({st['backend_reason']}), "
             f"peer {st['peer']}"]
    lines.append(f"{'gateway':<8} {'charon':<20} {'flowpin':<20} {'IKE_SA':<12} "
                 f"{'CHILD_SA':<10} {'SPI in/out':<19} selectors")
    for g in st["gateways"]:
        spis = f"{g['spi_in']}/{g['spi_out']}" if g["spi_in"] else "-"
        ts = (f"{','.join(g['local_ts'])} === {','.join(g['remote_ts'])}"
              if g["local_ts"] else "-")
        lines.append(f"{g['gw']:<8} {g['charon']:<20} {g.get('flowpin', '-'):<20} "
                     f"{g['ike_state'] or '-':<12} "
                     f"{g['child_state'] or '-':<10} {spis:<19} {ts}")
    return "\n".join(lines)


def _lab_errors(fn: Any) -> Any:
    """The lab's expected failures (a lab that is not up, a charon that does not start) as
    the CLI's one-line errors."""

    def run(a: argparse.Namespace) -> int:
        from lab.charon import CharonError
        from lab.lab import LabError

        try:
            return int(fn(a))
        except (LabError, CharonError) as exc:
            raise CliError(str(exc)) from None

    return run


@_lab_errors
def cmd_lab(a: argparse.Namespace) -> int:
    from lab.lab import Lab

    if a.lab_cmd == "down" and a.all:
        removed = Lab.down_all()
        print(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed
                                                         else ""))
        return 0
    lab = Lab(a.name)
    if a.lab_cmd == "up":
        lab.up(peer=a.peer, preserve=a.preserve == "on")
        st = lab.status()
        print_result(st, a.json, _lab_status_text(st))
    elif a.lab_cmd == "down":
        removed = lab.down()
        print(f"lab {a.name}: removed {len(removed)} namespaces")
    elif a.lab_cmd == "status":
        st = lab.status()
        print_result(st, a.json, _lab_status_text(st))
    elif a.lab_cmd == "exec":
        argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
        return lab.exec(a.node, argv).returncode
    elif a.lab_cmd == "flap":
        from lab.flap import flap

        res = flap(lab, a.how, a.seconds, gw=a.gw).as_dict()
        text = "\n".join(res["events"]) + (f"\noutage {res['outage_s']:.1f} s "
                                           f"(tunnel back {res['reestablish_s']:.1f} s after "
                                           "the disruption ended)")
        print_result(res, a.json, text)
    return 0


@_lab_errors
def cmd_demo(a: argparse.Namespace) -> int:
    from lab.demo import run

    return run(a)


def add_lab(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lab = sub.add_parser("lab", help="the two-gateway strongSwan lab in network namespaces")
    lab.set_defaults(handler=cmd_lab)
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)

    def named(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--name", default=DEFAULT_LAB, help="lab name (default %(default)s; "
                        "env FLOWPIN_LAB)")
        return sp

    up = named(lsub.add_parser("up", help="build the lab and bring the tunnel up"))
    up.add_argument("--peer", choices=("flowpin", "plain"), default="flowpin",
                    help="plain: ho-gw runs strongSwan alone, without flowpin")
    up.add_argument("--preserve", choices=("on", "off"), default="off",
                    help="sysopt preserve-vpn-flows of the lab's flowpin daemons")
    up.add_argument("--json", action="store_true")
    down = named(lsub.add_parser("down", help="remove everything the lab made"))
    down.add_argument("--all", action="store_true", help="every flowpin lab, also leftovers")
    st = named(lsub.add_parser("status", help="backend, charons, IKE/CHILD_SA states"))
    st.add_argument("--json", action="store_true")
    ex = named(lsub.add_parser("exec", help="run a command on a node: exec NODE -- CMD ..."))
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    fl = named(lsub.add_parser("flap", help="disrupt the tunnel, then bring it back"))
    fl.add_argument("--how", required=True, choices=("child", "ike", "dpd", "restart-charon"))
    fl.add_argument("--seconds", type=float, required=True)
    fl.add_argument("--gw", choices=("bo-gw", "ho-gw"), default="bo-gw")
    fl.add_argument("--json", action="store_true")


def add_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser("demo", help="Cisco's story: a download across a tunnel outage, "
                          "preserve-vpn-flows off and on, side by side")
    demo.set_defaults(handler=cmd_demo)
    demo.add_argument("--name", default="demo", help="lab name prefix (default %(default)s)")
    demo.add_argument("--outage", type=float, default=20.0, help="seconds (default 20)")
    demo.add_argument("--how", choices=("dpd", "child", "ike", "restart-charon"), default="dpd",
                      help="the kind of outage (default dpd: the WAN drops IKE and ESP)")
    demo.add_argument("--size", type=float, default=20.0, help="file size in MiB (default 20)")
    demo.add_argument("--out", default="out/demo", help="where the pictures go")
