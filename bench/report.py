"""``flowpin bench all --out DIR``: every benchmark, one report.

Runs, each as its own process whose JSON it captures (a failing part is reported and the
others still run): the forwarding comparison (:mod:`bench.forward`), the
tunnel overhead (:mod:`~bench.tunnel`), memory per flow
(:mod:`~bench.memory`), the data path's test-run figures
(:mod:`~bench.datapath`) and the control plane's latencies
(:mod:`~bench.control`). Writes ``DIR/results.json``, ``DIR/results.md``
(tables) and PNG charts (``forward.png``, ``tunnel.png``, ``memory.png``).

``--quick`` is a smoke run (1 short round each, small sizes): the shape of the report, not
numbers to publish.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import attach as attach_opt
from bench.common import machine

CONTENDERS = ("plain", "nftables", "flowpin")
MEASURE_LABEL = {"tput_gbps": "TCP throughput (Gbit/s)", "pps": "64-byte packets/s",
                 "cps": "new TCP connections/s"}
REPRODUCE = "sudo .venv/bin/flowpin bench all --out DIR"


def part_commands(rounds: int, seconds: int, quick: bool, tunnel_rounds: int = 8,
                  tunnel_seconds: int = 4, attach: str = "auto,clsact") -> dict[str, list[str]]:
    """``attach``: the TC hooks the forwarding and tunnel parts measure, side by side."""
    py = [sys.executable, "-m"]
    if quick:
        rounds, seconds, tunnel_rounds, tunnel_seconds = 1, 1, 1, 1
    r, s = ["--rounds", str(rounds)], ["--seconds", str(seconds)]
    tr, ts = ["--rounds", str(tunnel_rounds)], ["--seconds", str(tunnel_seconds)]
    at = ["--attach", attach]
    return {
        "forward": py + ["bench.forward", "--json", "--with-tc-empty",
                           "--with-tc-floor"] + r + s + at
        + (["--sliced-seconds", "2"] if quick else []),
        "tunnel": py + ["bench.tunnel", "--json"] + tr + ts + at
        + (["--sliced-seconds", "4"] if quick else []),
        "memory": py + ["bench.memory", "--json"]
        + (["--flows", "10000"] if quick else []),
        "datapath": py + ["bench.datapath", "--json"]
        + (["--repeat", "10000"] if quick else []),
        "control": py + ["bench.control", "--json"]
        + (["--flaps", "2", "--tunnels", "100", "--flows", "100000"] if quick else []),
    }


def run_part(name: str, argv: list[str], timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as exc:
        # Ctrl-C, SIGTERM or the timeout: let the part remove its namespaces and lab
        # (it unwinds on SIGINT), then make sure it is gone.
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            return {"error": f"{name}: timed out after {timeout:.0f} s"}
        raise
    p = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    out = p.stdout.strip().splitlines()
    try:
        res = json.loads(out[-1]) if out else {}
    except json.JSONDecodeError:
        res = {}
    if not isinstance(res, dict) or not res:
        res = {"error": f"{name} exited {p.returncode}: "
                        f"{(p.stderr or p.stdout).strip()[-400:]}"}
    elif p.returncode != 0 and "error" not in res:
        res["error"] = f"{name} exited {p.returncode}"
    res["_elapsed_s"] = round(time.monotonic() - t0, 1)
    return res


def assemble(parts: dict[str, dict[str, Any]], command: str) -> dict[str, Any]:
    """The results.json document from the parts' JSON."""
    fwd, tun, mem = parts.get("forward", {}), parts.get("tunnel", {}), parts.get("memory", {})
    errors = {k: v["error"] for k, v in parts.items() if "error" in v}
    return {
        "forward": fwd.get("forward", {}),
        "ratios": fwd.get("ratios", {}),
        "paired_ratios": fwd.get("paired_ratios", {}),
        "forward_targets": fwd.get("targets", {}),
        "forward_targets_by_attach": fwd.get("targets_by_attach", {}),
        "forward_checks": fwd.get("checks", {}),
        "per_packet": fwd.get("per_packet", {}),
        "tunnel": tun.get("tunnel", {}),
        "tunnel_checks": tun.get("checks", {}),
        "memory": mem.get("memory", {}),
        "datapath": {k: v for k, v in parts.get("datapath", {}).items() if k != "notes"},
        "control": parts.get("control", {}),
        "machine": fwd.get("machine") or machine(),
        "config": {"command": command, "forward": fwd.get("config", {}),
                   "tunnel": tun.get("config", {}),
                   "elapsed_s": {k: v.get("_elapsed_s") for k, v in parts.items()}},
        "notes": {k: v.get("notes", []) for k, v in parts.items() if v.get("notes")},
        "errors": errors,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --- results.md ------------------------------------------------------------------------

def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v:g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def _spread(s: dict[str, Any] | None, scale: float = 1.0, fmt: str = "{:,.0f}") -> str:
    if not s or s.get("median") is None:
        return "–"
    return (f"**{fmt.format(s['median'] * scale)}** "
            f"({fmt.format(s['min'] * scale)}–{fmt.format(s['max'] * scale)})")


def ratio_of(fwd: dict[str, Any], c: str, measure: str) -> float | None:
    """``c``'s median over plain's median for ``measure``."""
    a = fwd.get(c, {}).get(measure, {}).get("median")
    b = fwd.get("plain", {}).get(measure, {}).get("median")
    return round(a / b, 3) if a is not None and b else None


def _ok(v: Any, paired: bool | None = None) -> str:
    """A target's verdict. ``v``: met by the ratio of medians; ``paired``: met by the
    median of the per-round paired figures too (None: no paired figure). Medians alone
    can meet a target the paired rounds miss: that is not a target met, it is one the
    run cannot tell apart from a miss, and the README says so in the same words."""
    if v is None:
        return "–"
    if not v:
        return "✘ missed"
    if paired is False:
        return "medians ✔, paired ✘: **not reliably met**"
    return "✔ met"


def _at_least(v: float | None, floor: float | None) -> bool | None:
    return None if v is None or floor is None else v >= floor


def _attach_targets(res: dict[str, Any]) -> list[str]:
    """flowpin's forwarding targets per attach mode, side by side (paired ratios against
    plain, ratios of medians against nftables)."""
    by = res.get("forward_targets_by_attach", {})
    if not by:
        return []
    modes = list(by)
    mins = next(iter(by.values())).get("min_vs_plain_paired", {})
    out = ["### flowpin's targets per attach mode\n",
           "The same rounds, the same plain runs; clsact filters and tcx links carry the "
           "same programs.\n",
           "| target | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    # against plain: the paired ratio, then the ratio of medians; met when both are
    rows = [(f"≥ {mins.get(k, '–')}× plain, {label} (paired; medians)",
             f"{k}_vs_plain_paired", f"{k}_vs_plain") for k, label in
            (("tput", "throughput"), ("pps", "packets/s"), ("cps", "connections/s"))]
    rows += [(f"ahead of nftables, {label}", f"{k}_vs_nft", f"{k}_ahead_of_nft")
             for k, label in
             (("tput", "throughput"), ("pps", "packets/s"), ("cps", "connections/s"))]
    for label, mkey, okey in rows:
        cells = []
        for m in modes:
            got = by[m].get("measured", {})
            v = got.get(mkey)
            medians = got.get(okey) if mkey.endswith("_paired") else None
            shown = f"{_num(v)}{'×' if v is not None else ''}" + (
                f"; {_num(medians)}×" if medians is not None else "")
            verdict = _ok(by[m].get("met", {}).get(okey))
            sliced = got.get(f"{okey}_sliced")
            if sliced is not None:  # decides where measured (see the sliced table)
                shown = f"sliced {_num(sliced)}× ({shown})"
            elif medians is not None and v is not None:  # the words of the table above
                floor = mins.get(okey.removesuffix("_vs_plain"))
                verdict = _ok(_at_least(medians, floor), _at_least(v, floor))
            cells.append(f"{shown} {verdict}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def _sliced_table(res: dict[str, Any]) -> list[str]:
    """Packets/s and connections/s of each contender measured so against plain,
    alternating every half second within one load (bench.forward.sliced_pps, sliced_cps):
    the ratio, its 95 % interval, and what that ratio means in ns per packet (µs per
    connection) against plain's own cost in the same load."""
    fwd = res.get("forward", {})
    fc = res.get("config", {}).get("forward", {})
    out: list[str] = []
    for measure, title, load, unit, per in (
            ("pps", "Packets/s", "One flood", "ns added per packet", 1e9),
            ("cps", "Connections/s", "One client opening short connections (the server "
             "namespace's accepted connections read at each switch; the contender applied "
             "once, its hooks switched, flowpin with a 1 s pick-up window from each attach)",
             "µs added per connection", 1e6)):
        rows = {c: v[f"{measure}_sliced"] for c, v in fwd.items()
                if v.get(f"{measure}_sliced")}
        if not rows:
            continue
        out += [f"### {title} against plain, half a second apart (sliced)\n",
                f"{load} of {_num(fc.get('sliced_seconds'))} s per contender; the gateway "
                f"switches between plain and the contender every {_num(fc.get('slice_s'))} "
                "s and each of the contender's slices is divided by the mean of the plain "
                "slices around it. Round-based runs pair figures tens of seconds apart, "
                "across which plain alone wanders by ±10 % on this machine; half a second "
                f"apart both see the same machine. {unit} = 1 s / plain's rate in the same "
                "load × (1 / ratio − 1).\n",
                f"| contender | × plain (median) | 95 % interval | pairs | {unit} |",
                "|---|---|---|---|---|"]
        for c, v in rows.items():
            ratio, plain = v.get("vs_plain"), v.get(f"plain_{measure}_median")
            added = round(per / plain * (1 / ratio - 1), 1) if ratio and plain else None
            ci = v.get("ci95") or [None, None]
            out.append(f"| {c} | **{_num(ratio)}** | {_num(ci[0])}–{_num(ci[1])} | "
                       f"{v.get('pairs')} | {_num(added)} |")
        out.append("")
        checks = res.get("forward_checks", {})
        if measure == "cps" and checks.get("flowpin_removed_record_cpu_us") is not None:
            out += ["A new connection on a port a closed one used replaces that flow, and "
                    "the flow removed so is a record on the event ring: the daemon's side "
                    "(read, decoded, turned into its 302014 teardown line) ran on the "
                    "server's CPU, outside the figures above, and spent "
                    f"**{_num(checks['flowpin_removed_record_cpu_us'])} µs** of CPU per "
                    f"record ({_num(checks.get('flowpin_removed_records_logged'))} records "
                    "in this run).\n"]
    return out


def markdown(res: dict[str, Any]) -> str:
    out: list[str] = []
    m = res.get("machine", {})
    out.append(f"# flowpin benchmarks ({res.get('date', '')})\n")
    out.append(f"Machine: {m.get('cpus')} × {m.get('cpu')}"
               f"{' (virtual machine)' if m.get('virtualized') else ''}, "
               f"{m.get('memory_gib')} GiB, kernel {m.get('kernel')}, {m.get('os')}; "
               f"SRSO: {m.get('srso_mitigation')}; {m.get('iperf3')}.\n")
    out.append(f"Command: `{res.get('config', {}).get('command', REPRODUCE)}`\n")
    fwd = res.get("forward", {})
    fc = res.get("config", {}).get("forward", {})
    if fwd:
        out.append("## Forwarding through a gateway namespace (cleartext)\n")
        out.append(f"Median (min–max) of {fc.get('rounds')} alternating rounds of "
                   f"{fc.get('seconds')} s; ratio = median / plain's median.\n")
        out.append("| contender | TCP throughput, Gbit/s | ratio | 64-byte packets/s | ratio "
                   "| new TCP connections/s | ratio |")
        out.append("|---|---|---|---|---|---|---|")

        def rat(c: str, k: str) -> str:
            r = ratio_of(fwd, c, k)
            return "–" if r is None else f"{r:.3f}"

        for c in CONTENDERS + tuple(k for k in fwd if k not in CONTENDERS):
            row = fwd.get(c, {})
            out.append(f"| {c} | {_spread(row.get('tput_gbps'), fmt='{:.2f}')} | "
                       f"{rat(c, 'tput_gbps')} | {_spread(row.get('pps'))} | {rat(c, 'pps')} "
                       f"| {_spread(row.get('cps'))} | {rat(c, 'cps')} |")
        r, pr = res.get("ratios", {}), res.get("paired_ratios", {})
        ft = res.get("forward_targets", {})
        met = ft.get("met", {})
        out.append("\n| target | measured (ratio of medians; paired¹) | |")
        out.append("|---|---|---|")
        def floor(k: str) -> str:  # as the run had it (older results: 0.95)
            return f"{ft.get(k, 0.95):g}"

        for label, key, mk, paired_key, floor_key in (
                (f"flowpin ≥ {floor('flowpin_vs_plain_tput_min')}× plain, throughput",
                 "flowpin_vs_plain_tput", "tput_vs_plain",
                 "flowpin_vs_plain_tput_gbps", "flowpin_vs_plain_tput_min"),
                (f"flowpin ≥ {floor('flowpin_vs_plain_pps_min')}× plain, packets/s",
                 "flowpin_vs_plain_pps", "pps_vs_plain",
                 "flowpin_vs_plain_pps", "flowpin_vs_plain_pps_min"),
                *((
                    (f"flowpin ≥ {floor('flowpin_vs_plain_cps_min')}× plain, connections/s",
                     "flowpin_vs_plain_cps", "cps_vs_plain",
                     "flowpin_vs_plain_cps", "flowpin_vs_plain_cps_min"),
                ) if "flowpin_vs_plain_cps_min" in ft else ()),
                ("flowpin ahead of nftables, throughput", "flowpin_vs_nft_tput",
                 "tput_ahead_of_nft", None, None),
                ("flowpin ahead of nftables, packets/s", "flowpin_vs_nft_pps",
                 "pps_ahead_of_nft", None, None),
                ("flowpin ahead of nftables, connections/s", "flowpin_vs_nft_cps",
                 "cps_ahead_of_nft", None, None)):
            paired = pr.get(paired_key) if paired_key else None
            shown = f"{_num(r.get(key))}×" + (f"; {_num(paired)}" if paired is not None else "")
            paired_ok = _at_least(paired, ft.get(floor_key)) if floor_key else None
            verdict = _ok(met.get(mk), paired_ok)
            sliced = pr.get(f"{paired_key}_sliced") if paired_key else None
            if sliced is not None:
                measure = str(paired_key).removeprefix("flowpin_vs_plain_")
                ci = (fwd.get("flowpin", {}).get(f"{measure}_sliced", {}).get("ci95")
                      or [None, None])
                shown += f"; sliced² **{_num(sliced)}** ({_num(ci[0])}–{_num(ci[1])})"
                verdict = _ok(_at_least(sliced, ft.get(floor_key)))
            out.append(f"| {label} | {shown} | {verdict} |")
        out.append("\n¹ paired: median over rounds of the ratio to the same round's plain run.")
        if any(k.endswith("_sliced") for k in pr):
            out.append("² sliced: plain and flowpin alternating every half second within one "
                       "load (below); where it is measured it decides the target, the "
                       "round-based figures beside it are noisier pairings of the same "
                       "thing.")
        out.append("")
        out += _attach_targets(res)
        out += _sliced_table(res)
        pp = res.get("per_packet", {})
        if pp.get("plain_ns"):
            added, prog = pp.get("added_ns", {}), pp.get("prog_ns_bpf_stats", {})
            out.append("### What one 64-byte packet costs\n")
            out.append(f"The whole path (sender, client stack, gateway, server) runs on one CPU, "
                       f"so 1 s / pps is one packet's CPU time: {_num(pp['plain_ns'])} ns "
                       "with plain forwarding. Added by each contender (from the medians), "
                       "and the kernel's own account of the time inside the TC program "
                       "(BPF run statistics, one extra run each; they include the "
                       "accounting's clock reads, the same in both programs):\n")
            out.append("| contender | ns added per packet | ns inside the program |")
            out.append("|---|---|---|")
            for c, ns in added.items():
                out.append(f"| {c} | {_num(ns)} | {_num(prog.get(c)) if c in prog else '–'} |")
            if prog.get("flowpin_own") is not None:
                out.append(f"\nflowpin's own work (its program minus the empty one): "
                           f"**{_num(prog['flowpin_own'])} ns** per packet; the rest of what "
                           "it adds is the TC hook (`tc_empty`) and the caches its map "
                           "accesses take from the rest of the path.\n")
            if added.get("tc_floor") is not None and added.get("flowpin") is not None:
                above = round(added["flowpin"] - added["tc_floor"], 1)
                out.append(f"The floor of any TC flow table on this machine (`tc_floor`: "
                           f"parse, one hash lookup, one atomic add) adds "
                           f"{_num(added['tc_floor'])} ns "
                           f"({_num(ratio_of(fwd, 'tc_floor', 'pps'))}× plain); " + (
                               f"flowpin adds {_num(above)} ns more than that floor for "
                               "binding flows to tunnels, TCP state and its verdict "
                               "counters.\n" if above >= 0 else
                               f"flowpin came out {_num(-above)} ns below it in this run: "
                               "the two are closer than the run-to-run noise.\n"))
            out.append("")
    tun = res.get("tunnel", {})
    if tun:
        tc = res.get("config", {}).get("tunnel", {})
        out.append("## Through the IPsec tunnel (the lab)\n")
        out.append(f"iperf3 TCP bo-client → ho-server, IPsec backend {tun.get('backend')}; "
                   f"median (min–max) of {tc.get('rounds')} alternating rounds of "
                   f"{tc.get('seconds')} s"
                   f"{', every other round reversed' if tc.get('counterbalanced') else ''}."
                   "\n")
        modes = tc.get("attach") or []
        out.append("| gateways | throughput, Mbit/s |")
        out.append("|---|---|")
        out.append(f"| with flowpin's data path{f' ({modes[0]})' if modes else ''} | "
                   f"{_spread(tun.get('flowpin', {}).get('tput_mbps'), fmt='{:.0f}')} |")
        for m in modes[1:]:
            out.append(f"| with flowpin's data path ({m}) | "
                       f"{_spread(tun.get(f'flowpin_{m}', {}).get('tput_mbps'), fmt='{:.0f}')}"
                       " |")
        out.append(f"| without (filters removed) | "
                   f"{_spread(tun.get('none', {}).get('tput_mbps'), fmt='{:.0f}')} |")
        cap, paired = tun.get("target_overhead_pct_max"), tun.get("overhead_pct_paired")
        paired_ok = None if cap is None or paired is None else paired <= cap
        by = tun.get("by_attach", {})
        first = next(iter(by.values()), {}).get("sliced")
        if first:  # the sliced run decides (see below)
            out.append(f"\nOverhead with flowpin switched on and off every "
                       f"{_num(first.get('slice_s'))} s within one stream (sliced): "
                       f"**{_num(first.get('overhead_pct'))} %** (95 % interval "
                       f"{_num(first['ci95_pct'][0])} to {_num(first['ci95_pct'][1])} %; "
                       f"target ≤ {_num(cap if cap is not None else 2.0)} %: "
                       f"{_ok(tun.get('met'))}). From the rounds above: "
                       f"{_num(tun.get('overhead_pct'))} % (medians), {_num(paired)} % "
                       "(median of the per-round paired overheads): separate streams "
                       "tens of seconds apart, noisier pairings of the same thing.\n")
        else:
            out.append(f"\nOverhead: **{_num(tun.get('overhead_pct'))} %** (target ≤ "
                       f"{_num(cap if cap is not None else 2.0)} %: "
                       f"{_ok(tun.get('met'), paired_ok)}); median of the per-round "
                       f"paired overheads: {_num(paired)} %.\n")
        if len(by) > 1 or first:
            out.append("| attach mode | overhead (medians) | paired | sliced (95 % interval) "
                       f"| target ≤ {_num(cap if cap is not None else 2.0)} % |")
            out.append("|---|---|---|---|---|")
            for m, o in by.items():
                sl = o.get("sliced") or {}
                shown = (f"{_num(sl.get('overhead_pct'))} % ({_num(sl['ci95_pct'][0])} to "
                         f"{_num(sl['ci95_pct'][1])} %)" if sl else "–")
                out.append(f"| {m} | {_num(o.get('overhead_pct'))} % | "
                           f"{_num(o.get('overhead_pct_paired'))} % | {shown} | "
                           f"{_ok(o.get('met'))} |")
            out.append("")
    mem = res.get("memory", {})
    if mem:
        ct = mem.get("conntrack", {})
        fp = mem.get("flowpin", {})
        out.append(f"## Memory per tracked flow ({_num(mem.get('flows'))} flows)\n")
        out.append("| table | bytes per flow | from |")
        out.append("|---|---|---|")
        out.append(f"| flowpin `fp_flows4` | **{_num(mem.get('flowpin_bytes_per_flow'))}** | "
                   f"map memlock {_num(fp.get('memlock_bytes'))} B / "
                   f"{_num(fp.get('flows'))} flows |")
        out.append(f"| netfilter conntrack | **{_num(mem.get('conntrack_bytes_per_flow'))}** | "
                   f"slab {_num(ct.get('slab_bytes_per_entry'))} "
                   f"(nf_conn object {_num(ct.get('nf_conn_objsize'))}) + hash buckets "
                   f"{_num(ct.get('hash_bytes_per_entry'))} |\n")
    dp = res.get("datapath", {})
    if dp and "error" not in dp:
        hit = dp.get("established_hit_ns", {})
        out.append("## Data path (BPF_PROG_TEST_RUN, ns per packet)\n")
        out.append("| figure | ns |")
        out.append("|---|---|")
        out.append(f"| empty program (harness) | {_num(dp.get('empty_prog_ns'))} |")
        for n, v in hit.items():
            out.append(f"| established hit at {int(n):,} flows (one flow, cached) | {_num(v)} |")
        out.append(f"| held (tunnel down) | {_num(dp.get('held_ns'))} |")
        out.append(f"| new flow | {_num(dp.get('new_flow_ns'))} |")
        out.append(f"| pin / teardown of a 1M-flow tunnel (ms) | {_num(dp.get('pin_ms_1m'))}"
                   f" / {_num(dp.get('teardown_ms_1m'))} |")
        out.append(f"| sweep of 1M flows (s) | {_num(dp.get('sweep_s_1m'))} |\n")
        out += _datapath_spread(dp.get("established_spread", {}))
        out += _conntrack_spread(dp.get("conntrack_spread", {}))
        out += _datapath_targets(dp.get("targets", {}))
    ctl = res.get("control", {})
    if ctl and "error" not in ctl:
        e = ctl.get("event_to_map_ms", {})
        out.append("## Control plane\n")
        out.append("| figure | ms |")
        out.append("|---|---|")
        out.append(f"| SA event → map write, p50 / p99 / max ({_num(e.get('samples'))} "
                   f"events) | {_num(e.get('p50'))} / {_num(e.get('p99'))} / "
                   f"{_num(e.get('max'))} |")
        out.append(f"| resync of 1000 tunnels | {_num(ctl.get('resync_ms_1k_tunnels'))} |\n")
        scale = ctl.get("at_scale")
        if scale:
            flows, tunnels = _num(scale.get("flows")), _num(scale.get("tunnels"))
            td = scale.get("event_to_map_during_teardown_ms") or {}
            out.append(f"At {flows} flows over {tunnels} tunnels (a daemon on a private data "
                       "path; the flows written with batch updates):\n")
            out.append("| figure | measured |")
            out.append("|---|---|")
            out.append(f"| metrics scrape over HTTP (ms; {_num(scale.get('scrape_samples'))} "
                       f"samples) | {_num(scale.get('scrape_ms'))} |")
            if scale.get("scrape_shared_ms") is not None:
                out.append(f"| a scrape within a second of another: its answer shared (ms) | "
                           f"{_num(scale.get('scrape_shared_ms'))} |")
            out.append(f"| `show vpn-context` (ms) | {_num(scale.get('show_vpn_context_ms'))} |")
            out.append(f"| daemon RSS growth during 4 concurrent scrapes (MB) | "
                       f"{_num(scale.get('rss_growth_mb_4_scrapes'))} |")
            out.append(f"| SA event → map write while {_num(scale.get('teardown_logged'))} "
                       f"torn-down flows are swept and logged, p50 / p99 / max (ms, "
                       f"{_num(td.get('samples'))} events) | {_num(td.get('p50'))} / "
                       f"{_num(td.get('p99'))} / {_num(td.get('max'))} |")
            out.append(f"| sweep that counts the flows (s) / its RSS growth (MB) | "
                       f"{_num(scale.get('sweep_s'))} / "
                       f"{_num(scale.get('sweep_rss_growth_mb'))} |\n")
        tg = ctl.get("targets") or {}
        if tg and all(isinstance(v, dict) for v in tg.values()):
            out.append("| target | at most | measured | met |")
            out.append("|---|---|---|---|")
            for name, t in tg.items():
                out.append(f"| {name} | {_num(t.get('max'))} | {_num(t.get('got'))} | "
                           f"{_ok(t.get('met'))} |")
            out.append("")
    if res.get("errors"):
        out.append("## Errors\n")
        for k, v in res["errors"].items():
            out.append(f"- {k}: {v}")
        out.append("")
    for k, notes in res.get("notes", {}).items():
        out.append(f"### Notes: {k}\n")
        out += [f"- {n}" for n in notes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _mib(n: Any) -> str:
    return "–" if not isinstance(n, int) else f"{n / (1 << 20):,.0f} MiB"


def _datapath_spread(sp: dict[str, Any]) -> list[str]:
    """The established hit, cached and on a stream spread over the whole table."""
    if not sp:
        return []
    above = sp.get("above_empty_ns", {})
    c = sp.get("llc", {})
    fits = "exceeds" if sp.get("table_exceeds_llc") else "fits in"
    return [
        f"### An established hit, cached and spread over {_num(sp.get('flows'))} flows\n",
        "One test run per packet (repeat=1), the three streams interleaved packet by packet; "
        f"median of {_num(sp.get('rounds'))} rounds of {_num(sp.get('packets_per_round'))} "
        "packets. The spread stream hits a different flow on every packet, drawn at random "
        "and never twice, with the cache evicted before each round: no packet finds its "
        "flow in cache from an earlier one. The kernel's timer covers the program run only "
        "(not the syscall or the skb build).\n",
        "| stream | ns per packet | above the empty program |",
        "|---|---|---|",
        f"| empty program (one timed run) | {_num(sp.get('empty_ns'))} | – |",
        f"| one flow, cached | {_num(sp.get('cached_ns'))} | {_num(above.get('cached'))} |",
        f"| spread over {_num(sp.get('flows'))} flows, uncached | "
        f"**{_num(sp.get('spread_ns'))}** | **{_num(above.get('spread'))}** |",
        "",
        f"A miss costs {_num(sp.get('miss_penalty_ns'))} ns per packet over the cached hit. "
        "The cached flow costs more here than in the table above: around one run the "
        "syscall takes the caches and branch predictors the program had in a loop of "
        f"runs. The table ({_mib(sp.get('table_bytes'))}) {fits} this CPU's last-level "
        f"cache as sysfs reports it (L{c.get('level', '?')}, {_mib(c.get('bytes'))}, CPUs "
        f"{c.get('shared_cpus', '?')}). No target is set for this figure.\n",
    ]


def _conntrack_spread(ct: dict[str, Any]) -> list[str]:
    """Netfilter conntrack's cached and spread figures, on its own harness."""
    if not ct:
        return []
    if "error" in ct:
        return [f"Netfilter conntrack, cached and spread: not measured ({ct['error']}).\n"]
    c = ct.get("conntrack_ns", {})
    raised = ct.get("raised_for_run") or {}
    return [
        f"**Netfilter conntrack alike** ({_num(ct.get('entries'))} entries, "
        f"{_num(ct.get('hash_buckets'))} hash buckets"
        + (f", raised for the run: {', '.join(sorted(raised))}" if raised else "")
        + "): conntrack has no test-run harness, so this is a real send path in a "
        "namespace, timed by the sender's CPU clock, with conntrack on and off; what it "
        "adds per packet (on - off), median of "
        f"{_num(ct.get('rounds'))} rounds of {_num(ct.get('packets_per_round'))} "
        "datagrams. Compare with the data path's figures by what each adds, not by "
        "totals.\n",
        "| stream | conntrack adds, ns per packet |",
        "|---|---|",
        f"| one entry, cached | {_num(c.get('cached'))} |",
        f"| spread over {_num(ct.get('entries'))} entries, uncached | "
        f"**{_num(c.get('spread'))}** |",
        "",
        f"A miss costs conntrack {_num(ct.get('miss_penalty_ns'))} ns per packet over "
        "the cached entry.\n",
    ]


def _datapath_targets(tg: dict[str, Any]) -> list[str]:
    """The data path's per-packet targets, as judged by the benchmark."""
    hit, new = tg.get("established_hit_cached_1m"), tg.get("new_flow")
    if not hit and not new:
        return []
    out = ["| target (above the empty program) | measured | |", "|---|---|---|"]
    if hit:
        out.append(f"| established hit at 1M flows, cached: ≤ {_num(hit.get('max_ns'))} ns "
                   f"| {_num(hit.get('above_empty_ns'))} ns | {_ok(hit.get('met'))} |")
    if new:
        out.append(f"| new flow: ≤ the kernel's own preallocated-hash insert on this CPU "
                   f"({_num(new.get('kernel_insert_ns'))} ns, calibration) + "
                   f"{_num(new.get('margin_ns'))} ns = {_num(new.get('max_ns'))} ns | "
                   f"{_num(new.get('above_empty_ns'))} ns | {_ok(new.get('met'))} |")
    out.append("")
    return out


# --- charts ----------------------------------------------------------------------------

def charts(res: dict[str, Any], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    colors = {"plain": "#9e9e9e", "nftables": "#d9822b", "flowpin": "#2b6cb0",
              "none": "#9e9e9e", "tc_empty": "#8fb3d9",
              "tc_floor": "#5f8dc4"}

    def bars(ax: Any, names: list[str], stats: list[dict[str, Any]], title: str,
             scale: float = 1.0) -> None:
        med = [(s.get("median") or 0) * scale for s in stats]
        lo = [m - (s.get("min") or 0) * scale for m, s in zip(med, stats, strict=True)]
        hi = [(s.get("max") or 0) * scale - m for m, s in zip(med, stats, strict=True)]
        ax.bar(names, med, yerr=[lo, hi], capsize=6,
               color=[colors.get(n, "#2b6cb0") for n in names])
        for i, s in enumerate(stats):
            runs = [v * scale for v in s.get("runs", [])]
            ax.plot([i] * len(runs), runs, "k.", markersize=4)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)

    fwd = res.get("forward", {})
    if all(c in fwd for c in CONTENDERS):
        names = list(CONTENDERS) + [k for k in fwd if k not in CONTENDERS]
        fig, axes = plt.subplots(1, 3, figsize=(12 + len(names) - 3, 3.8))
        for ax, (k, label) in zip(axes, MEASURE_LABEL.items(), strict=True):
            stats = [fwd[c].get(k, {}) for c in names]
            bars(ax, names, stats, label)
        fig.suptitle("Forwarding through a gateway namespace: median, min–max, each round",
                     fontsize=11)
        fig.tight_layout()
        p = outdir / "forward.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    tun = res.get("tunnel", {})
    if "flowpin" in tun and "none" in tun:
        fig, ax = plt.subplots(figsize=(4.5, 3.8))
        bars(ax, ["none", "flowpin"], [tun["none"]["tput_mbps"], tun["flowpin"]["tput_mbps"]],
             f"IPsec tunnel ({tun.get('backend')}), Mbit/s\noverhead "
             f"{tun.get('overhead_pct')} %")
        fig.tight_layout()
        p = outdir / "tunnel.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    mem = res.get("memory", {})
    if mem.get("flowpin_bytes_per_flow") and mem.get("conntrack_bytes_per_flow"):
        fig, ax = plt.subplots(figsize=(4.5, 3.8))
        vals = [mem["conntrack_bytes_per_flow"], mem["flowpin_bytes_per_flow"]]
        ax.bar(["conntrack", "flowpin"], vals, color=["#d9822b", "#2b6cb0"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:g} B", ha="center", va="bottom")
        ax.set_title(f"Kernel memory per tracked flow\n({mem.get('flows', 0):,} flows)",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        p = outdir / "memory.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


def write(res: dict[str, Any], outdir: Path) -> list[Path]:
    """Write results.json, results.md and the charts; return the paths written."""
    outdir.mkdir(parents=True, exist_ok=True)
    pj, pm = outdir / "results.json", outdir / "results.md"
    pj.write_text(json.dumps(res, indent=2) + "\n")
    pm.write_text(markdown(res))
    return [pj, pm] + charts(res, outdir)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="flowpin bench all",
                                 description="every benchmark: results.json, results.md, "
                                 "PNG charts")
    ap.add_argument("--out", required=True, help="directory for the results")
    ap.add_argument("--rounds", type=int, default=7,
                    help="rounds of the forwarding comparison (default 7)")
    ap.add_argument("--seconds", type=int, default=3, help="seconds per run")
    ap.add_argument("--tunnel-rounds", type=int, default=8,
                    help="rounds through the IPsec tunnel (noisier: userspace ESP; even = "
                    "balanced order)")
    ap.add_argument("--tunnel-seconds", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 short round, small "
                    "sizes (numbers not for publishing)")
    # both kinds of hook side by side (auto: tcx where the kernel has it)
    attach_opt.add_option(ap, "auto,clsact")
    ap.add_argument("--only", action="append",
                    choices=("forward", "tunnel", "memory", "datapath", "control"),
                    help="run only this part (repeatable)")
    a = ap.parse_args(argv)
    if min(a.rounds, a.seconds, a.tunnel_rounds, a.tunnel_seconds) < 1:
        ap.error("rounds and seconds must be >= 1")
    cmds = part_commands(a.rounds, a.seconds, a.quick, a.tunnel_rounds, a.tunnel_seconds,
                         ",".join(a.attach))
    parts: dict[str, dict[str, Any]] = {}
    for name, argv_ in cmds.items():
        if a.only and name not in a.only:
            continue
        print(f"flowpin bench all: {name} ...", file=sys.stderr, flush=True)
        # each attach mode adds its TC contenders to the forward and tunnel rounds
        scale = len(a.attach) if name in ("forward", "tunnel") else 1
        parts[name] = run_part(name, argv_, timeout=900 * scale)
        if "error" in parts[name]:
            print(f"flowpin bench all: {name} failed: {parts[name]['error']}",
                  file=sys.stderr)
    command = "flowpin bench all " + " ".join(argv)
    res = assemble(parts, command)
    res["quick"] = a.quick
    paths = write(res, Path(a.out))
    print(json.dumps({"written": [str(p) for p in paths], "errors": res["errors"]}))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
