"""``flowpin bench faults --json``: the fault suite, as one JSON report.

Builds a lab (preserve-vpn-flows on, a small flow table), runs every fault of
:mod:`lab.faults` while bo-client sends >= 20,000 packets/s of mixed traffic,
and prints per fault the outage, the packets sent, the cleartext packets each gateway sent
on its WAN (must be 0), what the witness dropped (must be 0), the held transfers and the
verdict. Exit status 1 when a fault failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lab.faults import FAULTS, PPS, run


def _line(r: dict[str, Any]) -> str:
    g = r["generator"]
    return (f"{r['fault']:<24} {r['result']:<4} outage {r['outage_s']} s, "
            f"udp {g['udp_sent']} at {g['udp_pps']}/s, cleartext {r['cleartext']}, "
            f"witness dropped {[c['dropped'] for c in r['capture'].values()]}"
            + (f"; {'; '.join(r['failures'])}" if r["failures"] else ""))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flowpin bench faults")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    p.add_argument("--only", default="", help="comma-separated fault names (default: all: "
                   + ", ".join(f.name for f in FAULTS) + ")")
    p.add_argument("--pps", type=int, default=PPS, help="UDP packets/s (default %(default)s)")
    p.add_argument("--name", default=f"flt{os.getpid() % 100000}",
                   help="lab name (default: unique per run, %(default)s)")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()] or None
    known = {f.name for f in FAULTS}
    if names and set(names) - known:
        print(f"flowpin: error: unknown fault(s) {', '.join(sorted(set(names) - known))}",
              file=sys.stderr)
        return 1
    report = run(names, lab_name=a.name, pps=a.pps,
                 progress=lambda r: print(_line(r), file=sys.stderr, flush=True))
    print(json.dumps(report, indent=None if a.json else 2))
    return 0 if not report["failed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
