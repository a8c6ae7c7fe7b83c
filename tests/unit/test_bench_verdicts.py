"""The benchmarks' verdicts on paired targets: met on the paired ratio and the ratio of
medians both, in every table that judges them (bench/forward.py, bench/tunnel.py)."""

from __future__ import annotations

from bench.forward import targets_for


def test_a_forwarding_target_needs_the_paired_ratio_and_the_medians() -> None:
    ratios = {"flowpin_vs_plain_tput": 0.969, "flowpin_vs_plain_pps": 0.98,
              "flowpin_vs_plain_cps": 1.01, "flowpin_vs_nft_tput": 1.05}
    paired = {"flowpin_vs_plain_tput_gbps": 1.014, "flowpin_vs_plain_pps": 0.96,
              "flowpin_vs_plain_cps": 1.02}
    t = targets_for("flowpin", ratios, paired)
    assert t["met"]["tput_vs_plain"] is False  # paired met, medians not
    assert t["met"]["pps_vs_plain"] is False  # medians met, paired not
    assert t["met"]["cps_vs_plain"] is True
    assert t["measured"]["tput_vs_plain"] == 0.969
    assert t["measured"]["tput_vs_plain_paired"] == 1.014
    assert t["met"]["tput_ahead_of_nft"] is True
