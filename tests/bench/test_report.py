"""results.json / results.md / charts writer, on a small fake result (no root needed)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import report
from bench.common import alternate, ratio, summary


def _s(*runs: float) -> dict[str, object]:
    return summary(list(runs))


FAKE_PARTS = {
    "forward": {
        "forward": {
            "plain": {"tput_gbps": _s(20, 19, 21), "pps": _s(280e3, 270e3, 290e3),
                      "cps": _s(40e3, 41e3, 39e3)},
            "nftables": {"tput_gbps": _s(19, 18, 20), "pps": _s(230e3, 220e3, 240e3),
                         "cps": _s(36e3, 37e3, 35e3)},
            "flowpin": {"tput_gbps": _s(20, 19.5, 20.5), "pps": _s(270e3, 265e3, 275e3),
                        "cps": _s(38e3, 39e3, 37e3)},
            "tc_floor": {"tput_gbps": _s(20, 19.5, 20.5), "pps": _s(275e3, 270e3, 280e3),
                         "cps": _s(39e3, 40e3, 38e3)},
        },
        "ratios": {"flowpin_vs_plain_tput": 1.0, "flowpin_vs_nft_tput": 1.053,
                   "flowpin_vs_plain_pps": 0.964, "flowpin_vs_nft_pps": 1.174,
                   "flowpin_vs_nft_cps": 1.056},
        "targets": {"met": {"tput_vs_plain": True, "pps_vs_plain": True,
                            "tput_ahead_of_nft": True, "pps_ahead_of_nft": True,
                            "cps_ahead_of_nft": True}},
        "per_packet": {"plain_ns": 3571.4,
                       "added_ns": {"nftables": 776.4, "flowpin": 132.3, "tc_empty": 60.0,
                                    "tc_floor": 65.2},
                       "prog_ns_bpf_stats": {"flowpin": 131.0, "tc_empty": 61.8,
                                             "flowpin_own": 69.2}},
        "config": {"rounds": 3, "seconds": 1},
        "machine": {"cpu": "Test CPU", "cpus": 2, "kernel": "6.18", "virtualized": True},
        "notes": ["a note"],
    },
    "tunnel": {"tunnel": {"flowpin": {"tput_mbps": _s(500, 480, 520)},
                          "none": {"tput_mbps": _s(505, 490, 530)},
                          "overhead_pct": 0.99, "met": True, "backend": "kernel-libipsec"},
               "checks": {"datapath_packets_per_s": {"bo-gw": 13000, "ho-gw": 74000}},
               "config": {"rounds": 3, "seconds": 1}},
    "memory": {"memory": {"flows": 100000, "flowpin_bytes_per_flow": 133.0,
                          "conntrack_bytes_per_flow": 276.7,
                          "flowpin": {"memlock_bytes": 13298288, "flows": 100000},
                          "conntrack": {"slab_bytes_per_entry": 255.8, "nf_conn_objsize": 256,
                                        "hash_bytes_per_entry": 21.0}}},
    "datapath": {"empty_prog_ns": 33, "established_hit_ns": {"1": 75, "1000000": 73},
                 "held_ns": 73, "new_flow_ns": 397, "notes": ["dp note"],
                 "established_spread": {
                     "flows": 1000000, "packets_per_round": 200000, "rounds": 3,
                     "empty_ns": 69.6, "cached_ns": 165.0, "spread_ns": 1118.4,
                     "above_empty_ns": {"cached": 95.4, "spread": 1048.8},
                     "miss_penalty_ns": 953.4, "table_bytes": 134218864,
                     "llc": {"level": 3, "bytes": 272629760, "shared_cpus": "0-1"},
                     "table_exceeds_llc": False},
                 "conntrack_spread": {
                     "entries": 1000000, "hash_buckets": 1048576, "packets_per_round": 200000,
                     "rounds": 3, "conntrack_ns": {"cached": 45.0, "spread": 1034.3},
                     "miss_penalty_ns": 989.3,
                     "raised_for_run": {"nf_conntrack_max": 1010000,
                                        "nf_conntrack_buckets": 1048576}},
                 "targets": {
                     "established_hit_cached_1m": {"above_empty_ns": 40, "max_ns": 50,
                                                   "met": True},
                     "new_flow": {"above_empty_ns": 364, "kernel_insert_ns": 278,
                                  "margin_ns": 60, "max_ns": 338, "met": False}}},
    "control": {"error": "control: lab failed"},
}


def test_assemble_has_the_keys_the_report_reads() -> None:
    """results.json carries every figure results.md and the README tables are made of."""
    res = report.assemble(FAKE_PARTS, "flowpin bench all --out X")
    assert set(res["forward"]) == {"plain", "nftables", "flowpin", "tc_floor"}
    for k in ("flowpin_vs_plain_tput", "flowpin_vs_nft_tput", "flowpin_vs_plain_pps",
              "flowpin_vs_nft_pps", "flowpin_vs_nft_cps"):
        assert k in res["ratios"]
    assert res["tunnel"]["overhead_pct"] == 0.99
    assert res["tunnel_checks"]["datapath_packets_per_s"]["ho-gw"] == 74000
    assert res["memory"]["flowpin_bytes_per_flow"] == 133.0
    assert res["memory"]["conntrack_bytes_per_flow"] == 276.7
    assert res["machine"]["cpu"] == "Test CPU"
    assert "notes" not in res["datapath"] and res["datapath"]["held_ns"] == 73
    assert res["notes"]["datapath"] == ["dp note"]  # what each figure means travels along
    assert res["datapath"]["established_spread"]["above_empty_ns"]["spread"] == 1048.8
    assert res["datapath"]["targets"]["new_flow"]["met"] is False
    assert res["errors"] == {"control": "control: lab failed"}
    json.dumps(res)  # serialisable


def test_write_json_markdown_and_charts(tmp_path: Path) -> None:
    res = report.assemble(FAKE_PARTS, "flowpin bench all --out X")
    paths = report.write(res, tmp_path)
    names = {p.name for p in paths}
    assert {"results.json", "results.md", "forward.png", "tunnel.png", "memory.png"} <= names
    for p in paths:
        assert p.stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["ratios"][
        "flowpin_vs_nft_cps"] == 1.056
    assert (tmp_path / "forward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "results.md").read_text()
    assert "| flowpin | **20.00** (19.50–20.50) | 1.000 |" in md
    assert "| nftables |" in md and "| plain |" in md
    assert "Overhead: **0.99 %**" in md
    assert "one packet's CPU time: 3,571 ns" in md
    assert "| flowpin | 132.3 | 131 |" in md and "| nftables | 776.4 | – |" in md
    assert "flowpin's own work (its program minus the empty one): **69.2 ns**" in md
    assert "adds 65.2 ns (0.982× plain); flowpin adds 67.1 ns more than that floor" in md
    assert "| tc_floor |" in md
    # a flowpin median below the floor's is noise, and said so
    pp = FAKE_PARTS["forward"]["per_packet"]
    low = {**FAKE_PARTS, "forward": {**FAKE_PARTS["forward"], "per_packet": {
        **pp, "added_ns": {**pp["added_ns"], "flowpin": 50.0}}}}
    md = report.markdown(report.assemble(low, "x"))
    assert "flowpin came out 15.2 ns below it in this run" in md and "more than that" not in md
    assert "**133**" in md
    assert "control: lab failed" in md  # a failed part is shown, not hidden
    assert "Test CPU" in md


def test_partial_results_still_write(tmp_path: Path) -> None:
    res = report.assemble({"forward": {"error": "no root"}}, "x")
    paths = report.write(res, tmp_path)
    assert {p.name for p in paths} == {"results.json", "results.md"}
    assert "no root" in (tmp_path / "results.md").read_text()


def test_summary_alternation_and_ratio() -> None:
    order: list[str] = []

    def run(c: str, r: int) -> float:
        order.append(c)
        return {"a": 1.0, "b": 2.0}[c] + r

    out = alternate(["a", "b"], 3, run)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert out == {"a": [1.0, 2.0, 3.0], "b": [2.0, 3.0, 4.0]}
    s = summary(out["a"])
    assert (s["median"], s["min"], s["max"], s["runs"]) == (2.0, 1.0, 3.0, [1.0, 2.0, 3.0])
    assert ratio(1.0, 2.0) == 0.5 and ratio(None, 1.0) is None and ratio(1.0, 0) is None
    order.clear()
    alternate(["a", "b"], 3, run, counterbalance=True)
    assert order == ["a", "b", "b", "a", "a", "b"]


def test_a_target_met_by_medians_but_missed_paired_is_not_called_met() -> None:
    """Medians can land on the good side of a target while the per-round paired figures
    stay on the bad side: results.md says "not reliably met", as the README does, never a
    plain "met"."""
    fwd = {**FAKE_PARTS["forward"],
           "paired_ratios": {"flowpin_vs_plain_tput_gbps": 0.993, "flowpin_vs_plain_pps": 0.944},
           "targets": {**FAKE_PARTS["forward"]["targets"],
                       "flowpin_vs_plain_tput_min": 0.95, "flowpin_vs_plain_pps_min": 0.95}}
    tun = {**FAKE_PARTS["tunnel"], "tunnel": {**FAKE_PARTS["tunnel"]["tunnel"],
                                             "overhead_pct": 1.8, "overhead_pct_paired": 2.6,
                                             "target_overhead_pct_max": 2.0, "met": True}}
    md = report.markdown(report.assemble({**FAKE_PARTS, "forward": fwd, "tunnel": tun}, "x"))
    assert ("| flowpin ≥ 0.95× plain, packets/s | 0.964×; 0.944 | "
            "medians ✔, paired ✘: **not reliably met** |") in md
    assert "| flowpin ≥ 0.95× plain, throughput | 1×; 0.993 | ✔ met |" in md
    assert "(target ≤ 2 %: medians ✔, paired ✘: **not reliably met**)" in md
    # both met: plainly met; the median missed: missed, whatever the paired figure says
    fwd["paired_ratios"] = {"flowpin_vs_plain_pps": 0.951}
    tun["tunnel"] = {**tun["tunnel"], "overhead_pct_paired": 1.9}
    md = report.markdown(report.assemble({**FAKE_PARTS, "forward": fwd, "tunnel": tun}, "x"))
    assert "| flowpin ≥ 0.95× plain, packets/s | 0.964×; 0.951 | ✔ met |" in md
    assert "(target ≤ 2 %: ✔ met)" in md and "not reliably" not in md
    fwd["targets"] = {**fwd["targets"], "met": {**fwd["targets"]["met"], "pps_vs_plain": False}}
    md = report.markdown(report.assemble({**FAKE_PARTS, "forward": fwd, "tunnel": tun}, "x"))
    assert "| flowpin ≥ 0.95× plain, packets/s | 0.964×; 0.951 | ✘ missed |" in md


def test_datapath_cached_and_spread_hits_and_targets() -> None:
    """results.md shows the cached hit and the spread one side by side, what the spread
    table is measured against, and the per-packet targets as judged, a miss as a miss."""
    md = report.markdown(report.assemble(FAKE_PARTS, "x"))
    assert "| established hit at 1,000,000 flows (one flow, cached) | 73 |" in md
    assert "### An established hit, cached and spread over 1,000,000 flows" in md
    assert "| one flow, cached | 165 | 95.4 |" in md
    assert "| spread over 1,000,000 flows, uncached | **1,118** | **1,049** |" in md
    assert "A miss costs 953.4 ns per packet over the cached hit" in md
    assert "The table (128 MiB) fits in this CPU's last-level cache" in md
    assert "(L3, 260 MiB, CPUs 0-1)" in md
    assert "| established hit at 1M flows, cached: ≤ 50 ns | 40 ns | ✔ met |" in md
    assert ("| new flow: ≤ the kernel's own preallocated-hash insert on this CPU (278 ns, "
            "calibration) + 60 ns = 338 ns | 364 ns | ✘ missed |") in md
    assert ("**Netfilter conntrack alike** (1,000,000 entries, 1,048,576 hash buckets, "
            "raised for the run: nf_conntrack_buckets, nf_conntrack_max)") in md
    assert "| one entry, cached | 45 |" in md
    assert "| spread over 1,000,000 entries, uncached | **1,034** |" in md
    assert "A miss costs conntrack 989.3 ns per packet" in md
    # conntrack not measurable: said so, the data path's figures still there
    failed = {**FAKE_PARTS["datapath"], "conntrack_spread": {"error": "no nftables"}}
    md = report.markdown(report.assemble({**FAKE_PARTS, "datapath": failed}, "x"))
    assert "Netfilter conntrack, cached and spread: not measured (no nftables)" in md
    assert "| one flow, cached | 165 | 95.4 |" in md
    # an older datapath result without these figures still renders, without them
    old = {k: v for k, v in FAKE_PARTS["datapath"].items()
           if k not in ("established_spread", "conntrack_spread", "targets")}
    md = report.markdown(report.assemble({**FAKE_PARTS, "datapath": old}, "x"))
    assert "spread over" not in md and "preallocated-hash insert" not in md
    assert "conntrack" not in md.split("## Data path")[1].split("##")[0]


def test_control_at_scale_figures_and_targets_are_rendered() -> None:
    from bench.control import targets

    ctl = {"event_to_map_ms": {"p50": 0.4, "p99": 2.1, "max": 3.0, "samples": 80},
           "resync_ms_1k_tunnels": 140.2,
           "at_scale": {"flows": 1_000_000, "tunnels": 1000, "scrape_ms": 96.0,
                        "scrape_samples": 16_000, "scrape_shared_ms": 2.5,
                        "show_vpn_context_ms": 31.5, "rss_growth_mb_4_scrapes": 12.0,
                        "teardown_logged": 100_000, "sweep_s": 2.5,
                        "sweep_rss_growth_mb": 64.0,
                        "event_to_map_during_teardown_ms": {"p50": 0.5, "p99": 4.0,
                                                            "max": 9.0, "samples": 300}}}
    ctl["targets"] = targets(ctl)
    assert ctl["targets"]["scrape_ms"] == {"max": 50.0, "got": 96.0, "met": False}
    assert ctl["targets"]["show_vpn_context_ms"]["met"] is True
    md = report.markdown(report.assemble({**FAKE_PARTS, "control": ctl}, "x"))
    assert "At 1,000,000 flows over 1,000 tunnels" in md
    assert "| metrics scrape over HTTP (ms; 16,000 samples) | 96 |" in md
    assert "| a scrape within a second of another: its answer shared (ms) | 2.5 |" in md
    assert "| scrape_ms | 50 | 96 | ✘ missed |" in md  # a target missed is said so
    assert "| resync_ms_1k_tunnels | 100 | 140.2 | ✘ missed |" in md
    assert "| event_to_map_during_teardown_p99_ms | 5 | 4 | ✔ met |" in md


def test_attach_modes_side_by_side() -> None:
    """--attach tcx,clsact: both flowpins in the forwarding table, the targets per mode,
    and the tunnel's overhead per mode."""
    fwd = {**FAKE_PARTS["forward"],
           "forward": {**FAKE_PARTS["forward"]["forward"],
                       "flowpin_clsact": {"pps": _s(260e3, 255e3, 265e3)}},
           "targets_by_attach": {
               "tcx": {"min_vs_plain_paired": {"tput": 0.99, "pps": 0.97, "cps": 0.98},
                       "measured": {"pps_vs_plain_paired": 0.975, "pps_vs_nft": 1.2,
                                    "tput_vs_plain_paired": 1.014, "tput_vs_plain": 0.969},
                       "met": {"pps_vs_plain": True, "pps_ahead_of_nft": True,
                               "tput_vs_plain": False}},
               "clsact": {"min_vs_plain_paired": {"tput": 0.99, "pps": 0.97, "cps": 0.98},
                          "measured": {"pps_vs_plain_paired": 0.94, "pps_vs_nft": 1.1},
                          "met": {"pps_vs_plain": False, "pps_ahead_of_nft": True}}}}
    tun = {**FAKE_PARTS["tunnel"],
           "tunnel": {**FAKE_PARTS["tunnel"]["tunnel"],
                      "flowpin_clsact": {"tput_mbps": _s(490, 470, 510)},
                      "by_attach": {"tcx": {"overhead_pct": 0.99, "overhead_pct_paired": 1.1,
                                            "met": True},
                                    "clsact": {"overhead_pct": 2.9, "overhead_pct_paired": 3.1,
                                               "met": False}}},
           "config": {"rounds": 3, "seconds": 1, "attach": ["tcx", "clsact"]}}
    md = report.markdown(report.assemble({**FAKE_PARTS, "forward": fwd, "tunnel": tun}, "x"))
    assert "| flowpin_clsact |" in md
    assert "| target | tcx | clsact |" in md
    assert "| ≥ 0.97× plain, packets/s (paired; medians) | 0.975× ✔ met | 0.94× ✘ missed |" \
        in md
    # paired met, medians not: missed, in the per-mode table as in the summary's rule
    assert "| ≥ 0.99× plain, throughput (paired; medians) | 1.014×; 0.969× ✘ missed |" in md
    assert "| with flowpin's data path (clsact) | **490**" in md
    assert "| clsact | 2.9 % | 3.1 % | – | ✘ missed |" in md


def test_sliced_figures_decide_where_measured() -> None:
    """The sliced runs (plain and flowpin half a second apart within one flood; flowpin on
    and off every second within one stream): their table, their interval, their verdict."""
    fwd = {**FAKE_PARTS["forward"],
           "forward": {**FAKE_PARTS["forward"]["forward"],
                       "flowpin": {**FAKE_PARTS["forward"]["forward"]["flowpin"],
                                   "pps_sliced": {"vs_plain": 0.962, "ci95": [0.955, 0.968],
                                                  "pairs": 29, "plain_pps_median": 400000,
                                                  "pps_median": 385000},
                                   "cps_sliced": {"vs_plain": 0.985, "ci95": [0.981, 0.99],
                                                  "pairs": 29, "plain_cps_median": 20000,
                                                  "cps_median": 19700}}},
           "paired_ratios": {**FAKE_PARTS["forward"].get("paired_ratios", {}),
                             "flowpin_vs_plain_pps_sliced": 0.962,
                             "flowpin_vs_plain_cps_sliced": 0.985},
           "targets": {**FAKE_PARTS["forward"]["targets"], "flowpin_vs_plain_pps_min": 0.97,
                       "flowpin_vs_plain_cps_min": 0.98},
           "config": {**FAKE_PARTS["forward"].get("config", {}), "sliced_seconds": 30,
                      "slice_s": 0.5}}
    tun = {**FAKE_PARTS["tunnel"],
           "tunnel": {**FAKE_PARTS["tunnel"]["tunnel"], "met": True,
                      "by_attach": {"tcx": {"overhead_pct": 5.0, "overhead_pct_paired": 4.0,
                                            "met": True,
                                            "sliced": {"overhead_pct": 1.2,
                                                       "ci95_pct": [0.4, 1.9], "pairs": 19,
                                                       "slice_s": 1.0}}}}}
    md = report.markdown(report.assemble({**FAKE_PARTS, "forward": fwd, "tunnel": tun}, "x"))
    assert "### Packets/s against plain, half a second apart (sliced)" in md
    # 1 s / 400k = 2500 ns; × (1 / 0.962 - 1) = 98.8 ns
    assert "| flowpin | **0.962** | 0.955–0.968 | 29 | 98.8 |" in md
    assert "sliced² **0.962** (0.955–0.968) | ✘ missed |" in md  # the sliced figure decides
    assert "### Connections/s against plain, half a second apart (sliced)" in md
    # 1 s / 20k = 50 µs; × (1 / 0.985 - 1) = 0.76 µs
    assert "| flowpin | **0.985** | 0.981–0.99 | 29 | 0.8 |" in md
    assert "sliced² **0.985** (0.981–0.99) | ✔ met |" in md  # its own interval, its verdict
    assert "(sliced): **1.2 %** (95 % interval 0.4 to 1.9 %; target ≤ 2 %: ✔ met)" in md
    assert "| tcx | 5 % | 4 % | 1.2 % (0.4 to 1.9 %) | ✔ met |" in md
