"""Paired A/B of the data path's new-flow cost: ``python -m bench.newflow_ab [--base REV]``
(``--established``: of its cached established hit instead).

Builds of the data path (this checkout's, and ``bpf/`` of a git revision; with
``--breakdown``, copies of the base with one step of the new-flow path taken out) are run
side by side with the kernel's own insert (``bench/bpf/calibrate.c``), as
:func:`bench.datapath.new_flows` runs the one build: each round on fresh tables (a
cleared table hands out its elements in the order they were freed, which costs the insert
far more than a fresh one), ``--runs`` SYNs per build with ``-DFP_BENCH_VARY_KEY`` (each
creates a flow) in interleaved slices, one CPU. Prints ONE JSON object: per-round means
and, for each build, the median of its within-round differences to the base and to the
kernel insert. A step taken out changes what the program does: those builds are for the
breakdown only (``noinsert`` leaves its table empty).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.datapath import FLOWS_MAX, TUN, _frame
from bench.progs import compile_empty, source
from controlplane import datapath as dpm
from controlplane.flow_table import FlowTable
from controlplane.libbpf import prog_test_run

ROOT = Path(__file__).resolve().parent.parent
# one step of the new-flow path taken out each (text of policy.h, replacement)
STEPS = {
    "nolpm": ("\ttid = __classify(&c);\n", "\ttid = 1;\n"),
    "noinsert": ("\tif (fp_flow_store(&c->p, &c->k, &v, 0))\n\t\treturn -1;",
                 "\tif (0)\n\t\treturn -1;"),
    "nocount": ("\tfp_count_stat(reason);\n\tif (reason >= FP_R_DROP_NO_CONN)",
                "\tif (reason >= FP_R_DROP_NO_CONN)"),
}


def expand(root: Path, entry: str = "flowpin.c") -> str:
    """The C of ``root/entry`` with quoted includes expanded once each (the loader's own
    expansion, on another revision's tree)."""
    return dpm.bpf_source(entry, root=root)


def tree_of(rev: str, into: Path) -> Path:
    """``bpf/`` of git revision ``rev`` of this checkout, written under ``into``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "bpf"], check=True,
                         capture_output=True).stdout
    # the "data" filter where this Python has it (3.11.4+); git's own output either way
    kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, **kw)
    return into / "bpf"


def _load(text: str, vary_key: bool = True) -> tuple[Any, int, FlowTable]:
    import bcc

    cfg = dpm.DatapathConfig(instance="bench-ab", pin=False, flows4_max=FLOWS_MAX,
                             flows6_max=1024, tunnels_max=64, pickup_s=0,
                             cflags=["-DFP_BENCH_VARY_KEY"] if vary_key else [])
    dp = dpm.Datapath(cfg)
    # the loader's own steps (Datapath.load), on this text instead of the installed one
    dp._bpf = bcc.BPF(text=text.encode(), cflags=dpm._cflags(cfg))
    fd = dp._bpf.load_func(b"fp_outbound", bcc.BPF.SCHED_CLS).fd
    t = dp._table = FlowTable(dp._bpf)
    t.update_config(pickup_s=0, event_interval_ms=cfg.event_interval_ms)
    for fam in (4, 6):
        t.set_nonvpn_limit(fam, cfg.nonvpn_limit(fam))
    dp.calibrate_clock()
    t.add_selector(TUN, "10.0.0.0/8", "10.0.0.0/8")
    t.set_tunnel(TUN, up=True, preserve=True)
    return dp, fd, t


@contextlib.contextmanager
def _one_cpu_beside_empty() -> Iterator[int]:
    """Pinned to one CPU (the data path's counters are per CPU, and the builds must
    share one), with the empty program loaded to run beside the builds: its fd."""
    b_empty, fd_empty = compile_empty()
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield fd_empty
    finally:
        os.sched_setaffinity(0, cpus)
        b_empty.cleanup()


def _paired(res: dict[str, list[float]], a: str, b: str) -> dict[str, Any]:
    """Round by round differences of ``a`` to ``b``, and their median."""
    d = [round(x - y, 1) for x, y in zip(res[a], res[b], strict=True)]
    return {"median_ns": round(statistics.median(d), 1), "rounds": d}


def run(texts: dict[str, str], rounds: int, runs: int, chunks: int) -> dict[str, Any]:
    import bcc

    syn, ack = _frame("S"), _frame("A")
    per = runs // chunks
    names = list(texts)
    res: dict[str, list[float]] = {k: [] for k in ["empty", "insert", *names]}
    with _one_cpu_beside_empty() as fd_empty:
        for r in range(rounds):
            res["empty"].append(min(prog_test_run(fd_empty, ack, per).duration_ns
                                    for _ in range(3)))
            cal = bcc.BPF(text=source("calibrate.c").encode())
            progs = {"insert": (cal.load_func(b"cal_insert", bcc.BPF.SCHED_CLS).fd, ack, None)}
            dps = []
            for name in names:
                dp, fd, t = _load(texts[name])
                dps.append(dp)
                progs[name] = (fd, syn, t)
            order = list(progs)
            total = dict.fromkeys(order, 0)
            for c in range(chunks):
                k = (c + r) % len(order)
                for name in order[k:] + order[:k]:
                    fd, frame, _ = progs[name]
                    total[name] += prog_test_run(fd, frame, per).duration_ns
            for name in order:
                res[name].append(round(total[name] / chunks, 1))
                t = progs[name][2]
                made = t.counters()["PASS_NEW"] if t is not None else None
                if made is not None and made != per * chunks and "nocount" not in name:
                    raise RuntimeError(f"{name}: created {made} flows, not {per * chunks}")
            for dp in dps:
                dp.close()
            cal.cleanup()
            print(r, {k: v[-1] for k, v in res.items()}, file=sys.stderr, flush=True)
    base = names[0]
    return {"rounds": rounds, "runs": per * chunks, "chunks": chunks, "per_round": res,
            "above_insert": {n: _paired(res, n, "insert") for n in names},
            f"vs_{base}": {n: _paired(res, n, base) for n in names[1:]},
            "above_empty": {n: _paired(res, n, "empty") for n in ["insert", *names]}}


def established(texts: dict[str, str], rounds: int, runs: int) -> dict[str, Any]:
    """The cached established hit of each build, paired: one flow opened by a SYN, then
    ``runs`` ACKs of it per build and round (best of 3), the builds' order alternating
    from round to round, beside the empty program; one CPU."""
    syn, ack = _frame("S"), _frame("A")
    names = list(texts)
    res: dict[str, list[float]] = {k: [] for k in ["empty", *names]}
    with _one_cpu_beside_empty() as fd_empty:
        builds = {n: _load(texts[n], vary_key=False) for n in names}
        try:
            _established_rounds(builds, res, fd_empty, syn, ack, rounds, runs)
        finally:
            for dp, _fd, _t in builds.values():
                dp.close()
    base = names[0]
    return {"measure": "established hit (cached)", "rounds": rounds, "runs": runs,
            "per_round": res, f"vs_{base}": {n: _paired(res, n, base) for n in names[1:]},
            "above_empty": {n: _paired(res, n, "empty") for n in names}}


def _established_rounds(builds: dict[str, tuple[Any, int, FlowTable]],
                        res: dict[str, list[float]], fd_empty: int, syn: bytes, ack: bytes,
                        rounds: int, runs: int) -> None:
    """One flow opened by a SYN in each build, then the rounds of ACKs (best of 3 each),
    the builds' order alternating; every ACK must have been an established hit."""
    names = list(builds)
    for _dp, fd, _t in builds.values():
        prog_test_run(fd, syn, 1)
    for r in range(rounds):
        res["empty"].append(min(prog_test_run(fd_empty, ack, runs).duration_ns
                                for _ in range(3)))
        for name in (names if r % 2 == 0 else names[::-1]):
            fd = builds[name][1]
            res[name].append(min(prog_test_run(fd, ack, runs).duration_ns
                                 for _ in range(3)))
    for name, (_dp, _fd, t) in builds.items():
        c = t.counters()
        if c["PASS_FLOW"] != 3 * runs * rounds:
            raise RuntimeError(f"{name}: {c['PASS_FLOW']} established hits, not "
                               f"{3 * runs * rounds}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.newflow_ab", description=__doc__)
    ap.add_argument("--base", default="main", help="git revision of the base build")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=1_000_000,
                    help="new flows per build per round (the table has 1M entries)")
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--breakdown", action="store_true",
                    help="add base builds with one step of the new-flow path taken out")
    ap.add_argument("--established", action="store_true",
                    help="compare the builds' cached established hit instead (one flow, "
                         "--runs ACKs per build and round)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print(json.dumps({"error": "needs root"}))
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        base = expand(tree_of(a.base, Path(tmp)))
    texts = {"base": base, "this": expand(ROOT / "bpf")}
    if a.established:
        print(json.dumps(established(texts, a.rounds, a.runs), indent=1))
        return 0
    if a.breakdown:
        for step, (old, new) in STEPS.items():
            if old not in base:
                raise SystemExit(f"{step}: its text is not in the base build")
            texts[f"base_{step}"] = base.replace(old, new)
    print(json.dumps(run(texts, a.rounds, a.runs, a.chunks), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
