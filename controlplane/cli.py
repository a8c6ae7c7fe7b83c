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
DEFAULT_SOCKET = "/run/flowpin/default.sock"


def control_socket(a: argparse.Namespace) -> str:
    """--socket, else $FLOWPIN_SOCKET (set by `flowpin lab exec` on a gateway), else the
    default instance's socket."""
    return a.socket or os.environ.get("FLOWPIN_SOCKET") or DEFAULT_SOCKET


class CliError(RuntimeError):
    pass


def _print(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2) if as_json else text)


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


def cmd_lab(a: argparse.Namespace) -> int:
    from controlplane.lab.lab import Lab

    if a.lab_cmd == "down" and a.all:
        removed = Lab.down_all()
        print(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed
                                                         else ""))
        return 0
    lab = Lab(a.name)
    if a.lab_cmd == "up":
        lab.up(peer=a.peer, preserve=a.preserve == "on")
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


def cmd_daemon(a: argparse.Namespace) -> int:
    if a.check_config:
        return check_config(a.config)
    from controlplane.daemon import main as daemon_main

    return daemon_main(a.config, purge=a.purge)


def check_config(path: str) -> int:
    """``flowpin daemon --check-config`` (as ``nginx -t``; the unit's ExecStartPre): 0 and
    one line when the file would start the daemon, 1 and ``file:line: key: what`` if not."""
    from controlplane.config import ConfigError, check
    from controlplane.journal import error_line

    try:
        check(path)
    except ConfigError as exc:
        print(error_line(f"flowpin: configuration error: {exc}"), file=sys.stderr)
        return 1
    print(f"flowpin: configuration {path} is valid")
    return 0


def _ask(a: argparse.Namespace, cmd: str, args: dict[str, Any] | None = None) -> Any:
    from controlplane.control import ControlError, request

    try:
        return request(control_socket(a), cmd, args)
    except ControlError as exc:
        raise CliError(str(exc)) from None


def cmd_show(a: argparse.Namespace) -> int:
    from controlplane import show

    if a.what == "vpn-context":
        data = _ask(a, "show-vpn-context")
        _print(data, a.json, show.vpn_context(data, a.detail))
    elif a.what == "conn":
        data = _ask(a, "show-conn", {"tunnel": a.tunnel, "pinned": a.pinned})
        _print(data, a.json, show.conn(data))
    elif a.what == "sysopt":
        data = _ask(a, "show-sysopt")
        _print(data, a.json, show.sysopt(data))
    elif a.what == "counters":
        data = _ask(a, "show-counters")
        _print(data, a.json, show.counters(data))
    return 0


def cmd_sysopt(a: argparse.Namespace) -> int:
    from controlplane import show

    data = _ask(a, "sysopt", {"option": a.option, "on": a.value == "on", "tunnel": a.tunnel})
    print(show.sysopt(data))
    return 0


def cmd_clear(a: argparse.Namespace) -> int:
    data = _ask(a, "clear-conn", {"tunnel": a.tunnel, "address": a.address, "port": a.port,
                                  "protocol": a.protocol})
    print(f"{data['cleared']} connections cleared")
    return 0


def cmd_reload(a: argparse.Namespace) -> int:
    _ask(a, "reload", None)
    print("configuration reloaded")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from controlplane.demo import run

    return run(a)


BENCHMARKS = {
    "datapath": "controlplane.bench.datapath",  # issue 3: ns per packet, BPF_PROG_TEST_RUN
    "control": "controlplane.bench.control",  # issue 4: event -> map latency, resync
    "resume": "controlplane.bench.resume",  # issue 5: outage -> first byte resumed
    "forward": "controlplane.bench.forward",  # issue 6: plain vs nftables vs flowpin
    "faults": "controlplane.bench.faults",  # fail closed: faults under load, WAN witness
    "tunnel": "controlplane.bench.tunnel",  # throughput through the lab's tunnel, +/- flowpin
    "all": "controlplane.bench.report",  # issue 6: everything, results.json/.md + charts
}


def cmd_bench(a: argparse.Namespace, rest: list[str]) -> int:
    import importlib

    try:
        module = importlib.import_module(BENCHMARKS[a.bench_name])
    except ModuleNotFoundError as exc:
        raise CliError(f"benchmark {a.bench_name!r} is not available: {exc}") from None
    return int(module.main(rest))


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

    dm = sub.add_parser("daemon", help="run the flowpin daemon")
    dm.add_argument("--config", required=True, help="TOML file (see flowpin.example.toml)")
    dm.add_argument("--purge", action="store_true", help="on exit, detach the data path "
                    "and remove its pinned maps (flows are lost)")
    dm.add_argument("--check-config", action="store_true", help="only check the "
                    "configuration file (exit 0) or name file, line and key of its error "
                    "(exit 1), like `nginx -t`")

    def sock(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--socket", help="the daemon's control socket (default "
                        "$FLOWPIN_SOCKET or " + DEFAULT_SOCKET + ")")
        return sp

    show = sock(sub.add_parser("show", help="show vpn-context | conn | sysopt | counters"))
    show.add_argument("what", choices=("vpn-context", "conn", "sysopt", "counters"))
    show.add_argument("--json", action="store_true")
    show.add_argument("--detail", action="store_true", help="vpn-context: more per tunnel")
    show.add_argument("--tunnel", help="conn: only this tunnel (conn/child, conn or id)")
    show.add_argument("--pinned", action="store_true", help="conn: only pinned flows")
    so = sock(sub.add_parser("sysopt", help="sysopt preserve-vpn-flows|reclassify-vpn on|off"))
    so.add_argument("option", choices=("preserve-vpn-flows", "reclassify-vpn"))
    so.add_argument("value", choices=("on", "off"))
    so.add_argument("--tunnel", help="preserve-vpn-flows for one tunnel only")
    cl = sock(sub.add_parser("clear", help="clear conn [filters]"))
    cl.add_argument("what", choices=("conn",))
    cl.add_argument("--tunnel")
    cl.add_argument("--address")
    cl.add_argument("--port", type=int)
    cl.add_argument("--protocol", choices=("tcp", "udp", "icmp", "icmp6"))
    sock(sub.add_parser("reload", help="reload the daemon's configuration (as SIGHUP)"))

    demo = sub.add_parser("demo", help="Cisco's story: a download across a tunnel outage, "
                          "preserve-vpn-flows off and on, side by side")
    demo.add_argument("--name", default="demo", help="lab name prefix (default %(default)s)")
    demo.add_argument("--outage", type=float, default=20.0, help="seconds (default 20)")
    demo.add_argument("--how", choices=("dpd", "child", "ike", "restart-charon"), default="dpd",
                      help="the kind of outage (default dpd: the WAN drops IKE and ESP)")
    demo.add_argument("--size", type=float, default=20.0, help="file size in MiB (default 20)")
    demo.add_argument("--out", default="out/demo", help="where the pictures go")

    bench = sub.add_parser("bench", help="benchmarks (print JSON)")
    bench.add_argument("bench_name", choices=tuple(BENCHMARKS))
    return p


def main(argv: list[str] | None = None) -> int:
    from controlplane.lab.charon import CharonError
    from controlplane.lab.lab import LabError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["daemon"]:
        # Ctrl-C, and a plain `kill`, unwind through the `finally` blocks that remove labs,
        # also when started from a script that ignores SIGINT in the background.
        from controlplane.interrupt import unwind_on_signals

        unwind_on_signals()
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
        if a.cmd == "daemon":
            return cmd_daemon(a)
        handler = {"show": cmd_show, "sysopt": cmd_sysopt, "clear": cmd_clear,
                   "reload": cmd_reload}.get(a.cmd)
        if handler:
            return handler(a)
        if a.cmd == "bench":
            return cmd_bench(a, rest)
    except (LabError, CharonError, CliError, ValueError) as exc:
        print(f"flowpin: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flowpin: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flowpin show conn | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
