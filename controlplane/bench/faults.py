"""``flowpin bench faults --json``: the fault suite, as one JSON report.

Builds a lab (preserve-vpn-flows on, a small flow table), runs every fault of
:mod:`controlplane.lab.faults` while bo-client sends >= 20,000 packets/s of mixed traffic,
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

from controlplane.bench.common import machine
from controlplane.lab import faults
from controlplane.lab.faults import FAULTS, PPS, run


def _line(r: dict[str, Any]) -> str:
    g = r["generator"]
    return (f"{r['fault']:<24} {r['result']:<4} outage {r['outage_s']} s, "
            f"udp {g['udp_sent']} at {g['udp_pps']}/s ({g.get('engine')}), "
            f"cleartext {r['cleartext']}, "
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
    p.add_argument("--min-pps", type=int, default=None,
                   help="the rate a fault must reach to count (default 95 %% of --pps; "
                   f"also ${faults.MIN_PPS_ENV})")
    p.add_argument("--engine", choices=("sendmmsg", "pktgen", "auto"), default=None,
                   help=f"the UDP stream's sender (default sendmmsg; also ${faults.ENGINE_ENV})")
    p.add_argument("--procs", type=int, default=None,
                   help=f"sendmmsg sender processes (default: up to 2, one per CPU; also "
                   f"${faults.PROCS_ENV})")
    p.add_argument("--no-control", action="store_true",
                   help="skip the control run (the guard removed: the witness must see a leak)")
    a = p.parse_args(argv)
    for env, val in ((faults.MIN_PPS_ENV, a.min_pps), (faults.ENGINE_ENV, a.engine),
                     (faults.PROCS_ENV, a.procs)):
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
