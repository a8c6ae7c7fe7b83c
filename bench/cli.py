"""``flowpin bench NAME [options]``: the benchmarks' subcommand.

Each benchmark parses its own options (``flowpin bench NAME --help``); it reaches the
``flowpin`` command through the ``flowpin.subcommands`` entry point.
"""

from __future__ import annotations

import argparse
import importlib

from controlplane.cli import CliError

BENCHMARKS = {
    "datapath": "bench.datapath",  # ns per packet, BPF_PROG_TEST_RUN
    "control": "bench.control",  # event -> map latency, resync
    "resume": "bench.resume",  # outage -> first byte resumed
    "tcp-ld": "bench.tcp_ld",  # RFC 6069 probe: ICMP per dropped segment, no flowpin
    "forward": "bench.forward",  # plain vs nftables vs flowpin
    "faults": "bench.faults",  # fail closed: faults under load, WAN witness
    "tunnel": "bench.tunnel",  # throughput through the lab's tunnel, +/- flowpin
    "all": "bench.report",  # everything, results.json/.md + charts
}


def cmd_bench(a: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(BENCHMARKS[a.bench_name])
    except ModuleNotFoundError as exc:
        raise CliError(f"benchmark {a.bench_name!r} is not available: {exc}") from None
    return int(module.main(a.options))


def add_bench(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmarks (print JSON; NAME --help for options)")
    bench.set_defaults(handler=cmd_bench)
    bench.add_argument("bench_name", choices=tuple(BENCHMARKS))
    # everything after the name is the benchmark's own, --help included
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options")
