"""``flowpin``: the command line.

The product's own commands live here (``daemon``, ``show``, ``sysopt``, ``clear``, ``reload``).
The lab, the demo and the benchmarks add theirs through the ``flowpin.subcommands`` entry
point group (each entry is a function that adds its parsers), so this module never imports
them and a gateway install without them has no such commands.

Expected failures (a daemon that is not running, a lab that is not up, bad arguments) print
one line ``flowpin: error: …`` and exit 1; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points
from typing import Any

DEFAULT_SOCKET = "/run/flowpin/default.sock"
SUBCOMMANDS = "flowpin.subcommands"


def control_socket(a: argparse.Namespace) -> str:
    """--socket, else $FLOWPIN_SOCKET (set by `flowpin lab exec` on a gateway), else the
    default instance's socket."""
    return a.socket or os.environ.get("FLOWPIN_SOCKET") or DEFAULT_SOCKET


class CliError(RuntimeError):
    """An expected failure, printed as one line."""


def print_result(obj: Any, as_json: bool, text: str) -> None:
    """``obj`` as indented JSON with --json, else ``text``."""
    print(json.dumps(obj, indent=2) if as_json else text)


def cmd_daemon(a: argparse.Namespace) -> int:
    from controlplane.daemon import main as daemon_main

    return daemon_main(a.config, purge=a.purge)


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
        print_result(data, a.json, show.vpn_context(data, a.detail))
    elif a.what == "conn":
        data = _ask(a, "show-conn", {"tunnel": a.tunnel, "pinned": a.pinned})
        print_result(data, a.json, show.conn(data))
    elif a.what == "sysopt":
        data = _ask(a, "show-sysopt")
        print_result(data, a.json, show.sysopt(data))
    elif a.what == "counters":
        data = _ask(a, "show-counters")
        print_result(data, a.json, show.counters(data))
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




def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowpin", description="Persistent IPsec tunneled flows "
                                "for Linux gateways.")
    sub = p.add_subparsers(dest="cmd", required=True)

    dm = sub.add_parser("daemon", help="run the flowpin daemon")
    dm.add_argument("--config", required=True, help="TOML file (see flowpin.example.toml)")
    dm.add_argument("--purge", action="store_true", help="on exit, detach the data path "
                    "and remove its pinned maps (flows are lost)")

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
    rl = sock(sub.add_parser("reload", help="reload the daemon's configuration (as SIGHUP)"))

    dm.set_defaults(handler=cmd_daemon)
    show.set_defaults(handler=cmd_show)
    so.set_defaults(handler=cmd_sysopt)
    cl.set_defaults(handler=cmd_clear)
    rl.set_defaults(handler=cmd_reload)
    for ep in sorted(entry_points(group=SUBCOMMANDS), key=lambda e: e.name):
        ep.load()(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["daemon"]:
        # Ctrl-C, and a plain `kill`, unwind through the `finally` blocks that remove labs,
        # also when started from a script that ignores SIGINT in the background.
        from controlplane.interrupt import unwind_on_signals

        unwind_on_signals()
    a = parser().parse_args(argv)
    try:
        return int(a.handler(a))
    except (CliError, ValueError) as exc:
        print(f"flowpin: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flowpin: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flowpin show conn | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
