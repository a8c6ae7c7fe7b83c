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


def test_sliced_ratios_divide_each_slice_by_the_reference_around_it() -> None:
    from bench.common import bracketed, median_ci95

    # the machine speeds up by 10 % a slice; the contender costs 5 % of the reference
    slices = [(i % 2 == 1, 100 * 1.1 ** i * (0.95 if i % 2 else 1.0)) for i in range(9)]
    r = bracketed(slices)
    assert len(r) == 4  # slices 1, 3, 5, 7: each between two reference slices
    # the drift cancels all but its curvature: (1.1^-1 + 1.1) / 2 = 1.0045
    assert all(abs(x - 0.95 / 1.0045) < 1e-3 for x in r)
    assert bracketed([(True, 1.0), (False, 1.0), (True, 1.0)]) == []  # no reference around
    med, lo, hi = median_ci95([0.9, 0.95, 1.0, 0.97, 0.96])
    assert med == 0.96 and 0.9 <= lo <= med <= hi <= 1.0
    assert median_ci95([0.9, 0.95, 1.0]) == median_ci95([0.9, 0.95, 1.0])  # reproducible


def test_alternate_slices_switch_between_reads_and_end_off() -> None:
    """The switches fall between two reads (in no slice), the state alternates from the one
    asked for, and the contender is off on return, also when the load dies."""
    import pytest

    from bench.common import alternate_slices

    log: list[str] = []
    count = [0]

    def read() -> int:
        log.append("read")
        count[0] += 1000
        return count[0]

    def switch(on: bool) -> None:
        log.append("on" if on else "off")

    slices = alternate_slices(0.04, 0.01, True, read, switch, lambda: None)
    assert [on for on, _rate in slices] == [True, False, True, False]
    assert all(rate > 0 for _on, rate in slices)
    # each slice is two reads with nothing between them; the switches come between slices
    assert log == ["on", "read", "read", "off", "read", "read", "on", "read", "read",
                   "off", "read", "read"]

    log.clear()

    def dead() -> None:
        raise RuntimeError("load ended")

    with pytest.raises(RuntimeError):
        alternate_slices(0.04, 0.01, True, read, switch, dead)
    assert log[-1] == "off"  # switched off on the way out
