"""The lab's paced sender (lab.traffic.Pace): on schedule it sleeps until its next byte is
due; after a stall it makes up the whole stall, or only ``catch_up`` seconds of it."""

from __future__ import annotations

import pytest

from lab.traffic import Pace

RATE = 1000.0  # bytes/s: 1 byte a millisecond


def test_ahead_of_the_schedule_it_sleeps_until_due() -> None:
    pace = Pace(RATE, start=100.0)
    assert pace.wait(sent=500, now=100.2) == pytest.approx(0.3)
    assert pace.wait(sent=500, now=100.5) == 0.0


def test_without_a_bound_it_makes_up_the_whole_stall() -> None:
    pace = Pace(RATE, start=100.0)
    # stalled 60 s at 500 bytes: every byte up to 60,500 is already due
    assert pace.wait(sent=500, now=160.5) == 0.0
    assert pace.wait(sent=60_000, now=160.6) == 0.0
    assert pace.wait(sent=61_000, now=160.7) == pytest.approx(0.3)


def test_a_bound_forgives_all_but_catch_up_seconds_of_the_stall() -> None:
    pace = Pace(RATE, start=100.0, catch_up=1.0)
    assert pace.wait(sent=500, now=160.5) == 0.0  # 60 s behind: forgiven down to 1 s
    assert pace.wait(sent=1_000, now=160.5) == 0.0  # 0.5 s of the second still due
    assert pace.wait(sent=1_500, now=160.5) == 0.0  # exactly on time again
    assert pace.wait(sent=2_000, now=160.5) == pytest.approx(0.5)  # then paced


def test_catch_up_zero_carries_on_at_the_rate() -> None:
    pace = Pace(RATE, start=100.0, catch_up=0.0)
    assert pace.wait(sent=500, now=160.5) == 0.0
    assert pace.wait(sent=600, now=160.5) == pytest.approx(0.1)


def test_a_lag_within_the_bound_is_made_up() -> None:
    pace = Pace(RATE, start=100.0, catch_up=1.0)
    assert pace.wait(sent=500, now=101.2) == 0.0  # 0.7 s behind: within the bound
    assert pace.wait(sent=1_200, now=101.2) == 0.0
    assert pace.wait(sent=1_300, now=101.2) == pytest.approx(0.1)


@pytest.mark.parametrize(("rate", "piece"), [(20_000, 2_000), (2_000, 1024), (10**9, 64 * 1024)])
def test_written_a_tenth_of_a_second_at_a_time(rate: float, piece: int) -> None:
    """Paced in small pieces: a whole 64 KiB chunk at a time made 20 kB/s one burst every
    3.2 s, and a short transfer at 2 kB/s one burst of all of it."""
    assert Pace(rate, start=0.0).piece == piece
