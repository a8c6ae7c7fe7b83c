"""``flowpin``: the command line.

Expected failures (a lab that is not up, a missing package, bad arguments) print one line
``flowpin: error: …`` and exit 1; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_LAB = os.environ.get("FLOWPIN_LAB", "flowpin")


class CliError(RuntimeError):
    pass


def _print(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2) if as_json else text)


def _lab_status_text(st: dict[str, Any]) -> str:
    lines = [f"lab {st['name']}: IPsec backend {st['backend']} ({st['backend_reason']}), "
             f"peer {st['peer']}"]
    lines.append(f"{'gateway':<8} {'charon':<20} {'IKE_SA':<12} {'CHILD_SA':<10} "
                 f"{'SPI in/out':<19} selectors")
    for g in st["gateways"]:
        spis = f"{g['spi_in']}/{g['spi_out']}" if g["spi_in"] else "-"
        ts = (f"{','.join(g['local_ts'])} === {','.join(g['remote_ts'])}"
              if g["local_ts"] else "-")
        lines.append(f"{g['gw']:<8} {g['charon']:<20} {g['ike_state'] or '-':<12} "
                     f"{g['child_state'] or '-':<10} {spis:<19} {ts}")
    return "\n".join(lines)


def cmd_lab(a: argparse.Namespace) -> int:
    from controlplane.lab.lab import Lab

    if a.lab_cmd == "down" and a.all:
        removed = Lab.down_all()
        print(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed
                                                         else ""))
        return 0
    lab = Lab(a.name)
    if a.lab_cmd == "up":
        lab.up(peer=a.peer)
        st = lab.status()
        _print(st, a.json, _lab_status_text(st))
    elif a.lab_cmd == "down":
        removed = lab.down()
        print(f"lab {a.name}: removed {len(removed)} namespaces")
    elif a.lab_cmd == "status":
        st = lab.status()
        _print(st, a.json, _lab_status_text(st))
    elif a.lab_cmd == "exec":
        argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
        return lab.exec(a.node, argv).returncode
    elif a.lab_cmd == "flap":
        from controlplane.lab.flap import flap

        res = flap(lab, a.how, a.seconds, gw=a.gw).as_dict()
        text = "\n".join(res["events"]) + (f"\noutage {res['outage_s']:.1f} s "
                                           f"(tunnel back {res['reestablish_s']:.1f} s after "
                                           "the disruption ended)")
        _print(res, a.json, text)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from controlplane.demo import run

    return run(a)


def cmd_bench(a: argparse.Namespace, rest: list[str]) -> int:
    if a.bench_name == "datapath":
        from controlplane.bench.datapath import main as bench_main
    else:
        raise CliError(f"unknown benchmark {a.bench_name!r}")
    return bench_main(rest)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowpin", description="Persistent IPsec tunneled flows "
                                "for Linux gateways.")
    sub = p.add_subparsers(dest="cmd", required=True)

    lab = sub.add_parser("lab", help="the two-gateway strongSwan lab in network namespaces")
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)

    def named(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--name", default=DEFAULT_LAB, help="lab name (default %(default)s; "
                        "env FLOWPIN_LAB)")
        return sp

    up = named(lsub.add_parser("up", help="build the lab and bring the tunnel up"))
    up.add_argument("--peer", choices=("flowpin", "plain"), default="flowpin",
                    help="plain: ho-gw runs strongSwan alone, without flowpin")
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

    demo = sub.add_parser("demo", help="the lab, the tunnel, traffic across it")
    demo.add_argument("--name", default="demo")

    bench = sub.add_parser("bench", help="benchmarks (print JSON)")
    bench.add_argument("bench_name", choices=("datapath",))
    return p


def main(argv: list[str] | None = None) -> int:
    from controlplane.lab.charon import CharonError
    from controlplane.lab.lab import LabError

    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if argv[:1] == ["bench"]:
        a, rest = p.parse_known_args(argv)
    else:
        a, rest = p.parse_args(argv), []
    try:
        if a.cmd == "lab":
            return cmd_lab(a)
        if a.cmd == "demo":
            return cmd_demo(a)
        if a.cmd == "bench":
            return cmd_bench(a, rest)
    except (LabError, CharonError, CliError, ValueError) as exc:
        print(f"flowpin: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flowpin: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
