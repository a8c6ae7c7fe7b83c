"""``flowpin bench resume --json``: how long a held flow takes to pass again.

For each outage length, in the lab with preserve-vpn-flows on: a TCP transfer from
bo-client to ho-server is in flight; the tunnel goes down for S seconds; the figure is the
time from the new CHILD_SA being installed (flowpin's UP transition, the later of the two
gateways) to the first byte of the held flow arriving at ho-server again.

flowpin lets the flow pass the moment the tunnel is UP; what remains is TCP's own
retransmission backoff: the sender's next retransmission comes when its RTO (doubling with
every unanswered retransmission, capped at 120 s) expires. So the figure grows with the
outage. With the resume kick on (the default), each held segment is answered with an ICMP
unreachable from the gateway, so the sender's timer stays short and it sends again within
about one RTO of UP: ``--kick on,off`` measures both in one run (``resume_ms`` with the
kick, ``resume_ms_stock`` without), switching the kick on both gateways by a reload.

By default the outage is a CHILD_SA termination (``--how child``) with demand initiation
switched off, so that it lasts exactly S seconds; ``--how dpd`` drops IKE and ESP on the WAN
instead (then the outage is at least DPD's ~10 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.common import machine
from lab.flap import KINDS, flap
from lab.lab import Lab
from lab.traffic import Transfer

# Cases: (family, direction). "out": bo-client sends (LAN -> tunnel at bo-gw); "in":
# ho-server sends to bo-client (tunnel -> LAN at bo-gw; its held segments are ho-gw's).
CASES = {"ipv4-out": ("10.2.0.10", False), "ipv6-out": ("fd02::10", False),
         "ipv4-in": ("10.1.0.10", True), "ipv6-in": ("fd01::10", True)}


def measure(lab: Lab, outage: float, how: str, port: int,
            case: str = "ipv4-out") -> dict[str, Any]:
    rate = 100_000
    size = int(rate * (outage + 150))  # still sending when the flow resumes
    to, reverse = CASES[case]
    # Gated: the outage starts only once the connection is up and data flows (starting
    # Python takes seconds in an emulated VM: a flow not yet open is not held, it is refused).
    tr = Transfer(lab, to, size, rate=rate, port=port, timeout=outage + 200, reverse=reverse,
                  gated=True)
    try:
        tr.connected()
        tr.go()
        time.sleep(2.0)
        res = flap(lab, how, outage)
        up_wall = max(t["since"] for gw in lab.flowpin_gateways()
                      for t in lab.ask(gw, "show-vpn-context")["tunnels"])
        # Do not wait for the whole transfer: the first byte after the outage is enough.
        deadline = time.time() + outage + 180
        while time.time() < deadline:
            time.sleep(0.5)
            if _resumed_after(lab, port, up_wall):
                break
    finally:
        tr.client.kill()
        tr.client.wait()
        sent_got = tr.server.communicate(timeout=30)[0]
    got = json.loads(sent_got.strip().splitlines()[-1])
    gaps = [g for g in got.get("gaps", []) if g[1] >= up_wall]
    first = gaps[0][1] if gaps else None
    return {"resume_ms": round((first - up_wall) * 1000) if first else None,
            "outage_measured_s": round(res.up_at - res.down_at, 1),
            "sa_gone_after_s": round(res.sa_gone_at - res.down_at, 1)}


def set_kick(lab: Lab, on: bool) -> None:
    """Switch the resume kick on both gateways: rewrite their config, reload."""
    meta = lab.meta()
    meta.setdefault("daemon_options", {})["resume_kick"] = on
    (lab.state_dir / "lab.json").write_text(json.dumps(meta, indent=2))
    for gw in lab.flowpin_gateways():
        lab.ask(gw, "reload", {"path": str(lab.write_daemon_config(gw))})


def _kicked(lab: Lab) -> int:
    """ICMP unreachables sent so far by the flowpin gateways."""
    return sum(t.get("kicked", 0) for gw in lab.flowpin_gateways()
               for t in lab.ask(gw, "show-vpn-context")["tunnels"])


def _resumed_after(lab: Lab, port: int, up_wall: float) -> bool:
    """Whether bo-gw's flow for ``port`` has moved bytes since ``up_wall`` (cheap poll; the
    exact time comes from the receiver)."""
    for c in lab.ask("bo-gw", "show-conn")["connections"]:
        if port in (c["outside"]["port"], c["inside"]["port"]) and c["protocol"] == "TCP":
            return c["idle_s"] < max(0.0, time.time() - up_wall) - 0.5
    return False


def table(paths: list[str]) -> str:
    """The docs' table (markdown) from result files of this benchmark."""
    rows = ["| case | outage | kick on: resume | kicks | kick off (stock TCP) |",
            "|---|---|---|---|---|"]
    for path in paths:
        with open(path) as fh:
            res = json.load(fh)
        peer = " (--peer plain)" if res.get("peer") == "plain" else ""
        for case, outs in res.get("cases", {res.get("case", "ipv4-out"): res["outage_s"]}).items():
            for s, r in outs.items():
                def ms(v: Any) -> str:
                    return "-" if v is None else f"{v / 1000:.2f} s"
                rows.append(f"| {case}{peer} | {s} s | {ms(r.get('resume_ms'))} | "
                            f"{r.get('kicked', '-')} | {ms(r.get('resume_ms_stock'))} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--table"]:
        print(table(argv[1:]))
        return 0
    p = argparse.ArgumentParser(prog="flowpin bench resume")
    p.add_argument("--json", action="store_true", help="one JSON object (default)")
    p.add_argument("--outages", default="5,20,60,120", help="seconds, comma-separated")
    p.add_argument("--how", choices=KINDS, default="child")
    p.add_argument("--kick", default="on,off", help="resume kick on, off, or both (on,off)")
    p.add_argument("--cases", default="ipv4-out",
                   help=f"comma-separated, of {', '.join(CASES)} (out: LAN -> tunnel)")
    p.add_argument("--peer", choices=("flowpin", "plain"), default="flowpin",
                   help="plain: ho-gw runs strongSwan without flowpin (one-sided)")
    a = p.parse_args(argv)
    outages = [float(x) for x in a.outages.split(",") if x.strip()]
    lab = Lab("benchres")
    lab.down()
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}")
    lab.up(peer=a.peer, preserve=True, daemon_options={"initiate": a.how != "child"})
    by_case: dict[str, dict[str, Any]] = {}
    try:
        port = 5800
        for case in cases:
            out = by_case.setdefault(case, {})
            for s in outages:
                row: dict[str, Any] = {}
                for kick in [k.strip() for k in a.kick.split(",") if k.strip()]:
                    set_kick(lab, kick == "on")
                    before = _kicked(lab)
                    m = measure(lab, s, a.how, port, case)
                    port += 1
                    suffix = "" if kick == "on" else "_stock"
                    row.update({f"{k}{suffix}": v for k, v in m.items()})
                    row[f"kicked{suffix}"] = _kicked(lab) - before
                out[f"{s:g}"] = row
                print(f"{case} outage {s:g} s: {row}", file=sys.stderr, flush=True)
    finally:
        lab.down()
    print(json.dumps({"outage_s": by_case[cases[0]], "case": cases[0], "cases": by_case,
                      "how": a.how, "peer": a.peer, "machine": machine()},
                     indent=None if a.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
