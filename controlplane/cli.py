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
from importlib import metadata
from typing import Any

from controlplane import protocols, version

DEFAULT_SOCKET = "/run/flowpin/default.sock"
SUBCOMMANDS = "flowpin.subcommands"


def control_socket(a: argparse.Namespace) -> str:
    """--socket, else --instance's socket, else $FLOWPIN_SOCKET (set by `flowpin lab exec` on
    a gateway), else the default instance's socket."""
    if getattr(a, "socket", None):
        return str(a.socket)
    if getattr(a, "instance", None):
        return f"/run/flowpin/{a.instance}.sock"
    return os.environ.get("FLOWPIN_SOCKET") or DEFAULT_SOCKET



class CliError(RuntimeError):
    """An expected failure, printed as one line."""


def print_result(obj: Any, as_json: bool, text: str) -> None:
    """``obj`` as indented JSON with --json, else ``text``."""
    print(json.dumps(obj, indent=2) if as_json else text)


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


# The filters `show conn` and `clear conn` share, as options and as the ASA's keywords
# (`show conn address 10.1.0.10 port 443 protocol tcp`).
CONN_FILTERS = ("address", "port", "protocol", "tunnel")
PROTOCOLS = tuple(protocols.BY_NAME)


def conn_filters(a: argparse.Namespace) -> dict[str, Any]:
    """The filters of a conn command: options first, then ASA keyword pairs."""
    found: dict[str, Any] = {k: getattr(a, k, None) for k in CONN_FILTERS}
    terms = list(a.terms)
    while terms:
        key = terms.pop(0)
        if key not in CONN_FILTERS:
            raise CliError(f"unknown filter {key!r} (filters: {', '.join(CONN_FILTERS)})")
        if not terms:
            raise CliError(f"filter {key!r} needs a value")
        found[key] = terms.pop(0)
    if found["port"] is not None:
        try:
            found["port"] = protocols.port(found["port"])
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if found["protocol"] is not None and found["protocol"] not in PROTOCOLS:
        raise CliError(f"protocol {found['protocol']!r} is not one of {', '.join(PROTOCOLS)}")
    return found


def cmd_show(a: argparse.Namespace) -> int:
    from controlplane import show

    if a.what == "vpn-context":
        data = _ask(a, "show-vpn-context")
        print_result(data, a.json, show.vpn_context(data, a.detail))
    elif a.what == "conn":
        show_conn(a)
    elif a.what == "sysopt":
        data = _ask(a, "show-sysopt")
        print_result(data, a.json, show.sysopt(data))
    elif a.what == "counters":
        data = _ask(a, "show-counters")
        print_result(data, a.json, show.counters(data))
    return 0


def show_conn(a: argparse.Namespace) -> None:
    """``show conn``, printed as the daemon streams it: each row as it comes (the count
    line last), or with --json one JSON object written as it comes (its rows first, the
    counts after them), so neither side ever holds a million rows."""
    from controlplane import show
    from controlplane.control import ControlError, request_stream

    args = {**conn_filters(a), "pinned": a.pinned, "limit": a.limit}
    out = sys.stdout
    n = 0
    try:
        for kind, item in request_stream(control_socket(a), "show-conn", args):
            if kind == "data":  # a daemon that does not stream: the whole answer at once
                print_result(item, a.json, show.conn(item))
            elif kind == "head" and a.json:
                out.write("{\"connections\": [")
            elif kind == "row":
                if a.json:
                    out.write(("," if n else "") + "\n  " + json.dumps(item))
                else:
                    out.write(show.conn_line(item) + "\n")
                n += 1
            elif kind == "end":
                if a.json:
                    tail = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in item.items())
                    out.write(("\n" if n else "") + "]" + tail + "}\n")
                else:
                    out.write(show.conn_summary(item) + "\n")
    except ControlError as exc:
        raise CliError(str(exc)) from None


def cmd_status(a: argparse.Namespace) -> int:
    from controlplane import show

    data = _ask(a, "status")
    print_result(data, a.json, show.status(data))
    return 0


def cmd_sysopt(a: argparse.Namespace) -> int:
    from controlplane import show

    data = _ask(a, "sysopt", {"option": a.option, "on": a.value == "on", "tunnel": a.tunnel})
    print_result(data, a.json, show.sysopt(data))
    return 0


def cmd_clear(a: argparse.Namespace) -> int:
    data = _ask(a, "clear-conn", conn_filters(a))
    print_result(data, a.json, f"{data['cleared']} connections cleared")
    return 0


def cmd_reload(a: argparse.Namespace) -> int:
    data = _ask(a, "reload", None)
    print_result(data, a.json, "configuration reloaded")
    return 0


def parser(with_rig: bool = True) -> argparse.ArgumentParser:
    """The whole command line. ``with_rig``: with the subcommands that installed packages add
    through the ``flowpin.subcommands`` entry points (the lab, the demo, the benchmarks); the
    gateway's man page and completion are made without them."""
    p = argparse.ArgumentParser(prog="flowpin", description="Persistent IPsec tunneled flows "
                                "for Linux gateways.")
    p.add_argument("--version", action="version", version=f"flowpin {version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    dm = sub.add_parser("daemon", help="run the flowpin daemon")
    dm.add_argument("--config", required=True, help="TOML file (see flowpin.example.toml)")
    dm.add_argument("--purge", action="store_true", help="on exit, detach the data path "
                    "and remove its pinned maps (flows are lost)")
    dm.add_argument("--check-config", action="store_true", help="only check the "
                    "configuration file (exit 0) or name file, line and key of its error "
                    "(exit 1), like `nginx -t`")
    dm.set_defaults(handler=cmd_daemon)

    def control(name: str, help: str) -> argparse.ArgumentParser:
        """A command that asks a running daemon: which one, and --json."""
        sp = sub.add_parser(name, help=help, description=help)
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--instance", help="the daemon's instance name (its config's "
                           "`instance`; default: $FLOWPIN_SOCKET, else `default`)")
        where.add_argument("--socket", help="the daemon's control socket path (default "
                           f"{DEFAULT_SOCKET})")
        sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    def filters(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("terms", nargs="*", metavar="KEYWORD VALUE",
                        help="ASA-style filters: address A, port P, protocol "
                        f"{'|'.join(PROTOCOLS)}, tunnel T")
        sp.add_argument("--tunnel", help="only this tunnel (conn/child, conn or id)")
        sp.add_argument("--address", help="either end's address")
        sp.add_argument("--port", help="either end's port")
        sp.add_argument("--protocol", choices=PROTOCOLS)

    st = control("status", "the daemon at a glance: backend, tunnels, held flows, hooks, "
                 "last error")
    st.set_defaults(handler=cmd_status)
    show = control("show", "show vpn-context | conn | sysopt | counters")
    show.add_argument("what", choices=("vpn-context", "conn", "sysopt", "counters"))
    show.add_argument("--detail", action="store_true", help="vpn-context: more per tunnel")
    show.add_argument("--pinned", action="store_true", help="conn: only pinned flows")
    show.add_argument("--limit", type=int, metavar="N", help="conn: at most N connections "
                      "(the count line still counts every flow)")
    filters(show)
    show.set_defaults(handler=cmd_show)
    so = control("sysopt", "sysopt preserve-vpn-flows|reclassify-vpn on|off")
    so.add_argument("option", choices=("preserve-vpn-flows", "reclassify-vpn"))
    so.add_argument("value", choices=("on", "off"))
    so.add_argument("--tunnel", help="preserve-vpn-flows for one tunnel only")
    so.set_defaults(handler=cmd_sysopt)
    cl = control("clear", "clear conn [filters]: tear flows down")
    cl.add_argument("what", choices=("conn",))
    filters(cl)
    cl.set_defaults(handler=cmd_clear)
    rl = control("reload", "reload the daemon's configuration (as SIGHUP)")
    rl.set_defaults(handler=cmd_reload)
    if with_rig:
        for ep in sorted(metadata.entry_points(group=SUBCOMMANDS), key=lambda e: e.name):
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
    # `python -m controlplane.cli`: run the imported module's main, not this copy's, so the
    # lab's and the benchmarks' subcommands raise the same CliError that main catches.
    from controlplane.cli import main as imported_main

    sys.exit(imported_main())
