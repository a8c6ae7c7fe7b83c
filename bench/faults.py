"""``flowpin bench faults --json``: the fault suite, as one JSON report.

Builds a lab (preserve-vpn-flows on, a small flow table), runs every fault of
:mod:`lab.faults` while bo-client sends >= 20,000 packets/s of mixed traffic,
and prints per fault the outage, the packets sent, the cleartext packets each gateway sent
on its WAN (must be 0), what the witness dropped (must be 0), the held transfers and the
verdict. Exit status 1 when a fault failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.common import machine
from lab import faults
from lab.faults import FAULTS, PPS, run


def _line(r: dict[str, Any]) -> str:
    g = r["generator"]
    return (f"{r['fault']:<24} {r['result']:<4} outage {r['outage_s']} s, "
            f"udp {g['udp_sent']} at {g['udp_pps']}/s ({g.get('processes')} senders), "
            f"cleartext {r['cleartext']}, "
            f"witness dropped {[c['dropped'] for c in r['capture'].values()]}"
            + (f"; {'; '.join(r['failures'])}" if r["failures"] else ""))


def results(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(report, per-fault results) of a ``bench faults --json`` output, or of a pytest log
    of ``tests/faults`` run with ``-s`` (one JSON line per fault; the backend in each)."""
    text = path.read_text(errors="replace")
    with contextlib.suppress(ValueError):
        report = json.loads(text)
        return report, report["faults"]
    rows = []
    for line in text.splitlines():
        start = line.find('{"kind"')
        if start >= 0:
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line[start:]))
    return {"backend": rows[0].get("backend") if rows else None}, rows


def table(paths: list[Path]) -> str:
    """A Markdown table of fault results, one row per fault and backend: what docs show."""
    out = ["| backend | fault | result | UDP packets/s offered (sender) | bo-gw WAN "
           "packets/s sent, fault average (witness) | cleartext bo-gw / ho-gw WAN | "
           "witness dropped | held transfers sha256 | new connection after | outage (s) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        report, rows = results(path)
        accel = (report.get("machine") or {}).get("vm_accel")
        for r in rows:
            vm = r.get("vm_accel") or accel
            backend = (r.get("backend") or report.get("backend") or "?") + (
                f" ({vm.upper()} VM)" if vm else "")
            g, ct = r["generator"], r["cleartext"]
            cap = r.get("capture") or r.get("witness") or {}
            tr = r.get("transfers") or []
            sha = ("n/a" if not tr else "equal" if all(t["sha256_ok"] for t in tr)
                   else "DIFFER: " + ", ".join(f"{t['to']} {t['received']}/{t['bytes']} B"
                                               for t in tr if not t["sha256_ok"]))
            name = r["fault"] + (f" ({r['note']})" if r.get("note") else "")
            # What bo-gw sent on its WAN per second over the fault (ESP, IKE and any
            # leak): what it forwarded, where a sender's rate only says what was offered.
            wan = (round(cap["bo-gw"]["captured"] / r["seconds"])
                   if r.get("seconds") and (cap.get("bo-gw") or {}).get("captured")
                   else "n/a")
            out.append(f"| {backend} | {name} | {r['result']} | {g.get('udp_pps')} | {wan} | "
                       f"{ct.get('bo-gw')} / {ct.get('ho-gw')} | "
                       f"{sum((c.get('dropped') or 0) for c in cap.values())} | {sha} | "
                       f"{'yes' if r['new_connection_after'].get('ok') else 'NO'} | "
                       f"{r.get('outage_s')} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flowpin bench faults")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    p.add_argument("--only", default="", help="comma-separated fault names (default: all: "
                   + ", ".join(f.name for f in FAULTS) + ")")
    p.add_argument("--pps", type=int, default=PPS, help="UDP packets/s (default %(default)s)")
    p.add_argument("--name", default=f"flt{os.getpid() % 100000}",
                   help="lab name (default: unique per run, %(default)s)")
    p.add_argument("--min-pps", type=int, default=None,
                   help="the rate a fault must reach to count (default 95 %% of --pps; "
                   f"also ${faults.MIN_PPS_ENV})")
    p.add_argument("--procs", type=int, default=None,
                   help=f"UDP sender processes (default: one per CPU, up to 2; also "
                   f"${faults.PROCS_ENV})")
    p.add_argument("--no-control", action="store_true",
                   help="skip the control run (the guard removed: the witness must see a leak)")
    p.add_argument("--table", nargs="+", metavar="RESULT",
                   help="only print the docs' Markdown table of these results (this "
                   "command's JSON, or a pytest log of tests/faults run with -s)")
    a = p.parse_args(argv)
    if a.table:
        print(table([Path(t) for t in a.table]))
        return 0
    for env, val in ((faults.MIN_PPS_ENV, a.min_pps), (faults.PROCS_ENV, a.procs)):
        if val is not None:
            os.environ[env] = str(val)
    names = [n.strip() for n in a.only.split(",") if n.strip()] or None
    known = {f.name for f in FAULTS}
    if names and set(names) - known:
        print(f"flowpin: error: unknown fault(s) {', '.join(sorted(set(names) - known))}",
              file=sys.stderr)
        return 1
    report = run(names, lab_name=a.name, pps=a.pps, control=not a.no_control,
                 progress=lambda r: print(_line(r), file=sys.stderr, flush=True))
    # make test-xfrm says which accelerator its VM has: under TCG every instruction is
    # emulated, and the rates reached are the emulator's, not a machine's.
    report["machine"] = machine() | {"vm_accel": os.environ.get("FLOWPIN_VM_ACCEL")}
    print(json.dumps(report, indent=None if a.json else 2))
    return 0 if not report["failed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
