"""Durations as the ASA writes them, and its default idle timeouts."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.durations import Timeouts, format_duration, parse_duration


@pytest.mark.parametrize(("text", "secs"), [
    ("1:00:00", 3600), ("0:10:00", 600), ("0:02:00", 120), ("0:00:30", 30), ("0:00:10", 10),
    ("2:30", 150), ("45", 45), (12, 12), (1.5, 1.5)])
def test_parse_duration(text: Any, secs: float) -> None:
    assert parse_duration(text) == secs


@pytest.mark.parametrize("bad", ["1:xx:00", "1:2:3:4", "-5", -1])
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_default_timeouts_are_the_asa_ones() -> None:
    t = Timeouts()
    assert (t.conn, t.half_closed, t.udp, t.embryonic, t.closed) == (3600, 600, 120, 30, 10)
    assert format_duration(3725) == "1:02:05"
    with pytest.raises(ValueError):
        Timeouts.parse(bogus=1)
