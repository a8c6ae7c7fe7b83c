"""Each flowpin line reaches the journal at its ASA (syslog) severity: the priority of a
line, the prefix journald parses on a stream, recognising the journal's stream. That the
daemon's own logging setup sends native-protocol entries (it needs root) is
tests/deploy/test_journal_native.py."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from controlplane.journal import PrefixFormatter, connected_to_journal, error_line, priority

REPO = Path(__file__).resolve().parents[2]


def record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("flowpin", level, __file__, 1, msg, None, None)


@pytest.mark.parametrize(("line", "level", "want"), [
    ("%FLOWPIN-6-302014: Teardown TCP connection 1 for ...", logging.INFO, (6, "302014")),
    # NOTICE has no Python level (logged as WARNING): the line's number wins.
    ("%FLOWPIN-5-752111: connected to charon", logging.WARNING, (5, "752111")),
    ("%FLOWPIN-4-752107: flow table full", logging.WARNING, (4, "752107")),
    ("%FLOWPIN-3-752114: internal error", logging.ERROR, (3, "752114")),
    ("%FLOWPIN-1-752199: alert", logging.CRITICAL, (1, "752199")),
    # A library's line: syslog's number for the Python level.
    ("pyroute2 said something", logging.WARNING, (4, "")),
    ("debugging", logging.DEBUG, (7, "")),
    ("between levels", logging.INFO + 5, (6, "")),
])
def test_priority_of_a_line(line: str, level: int, want: tuple[int, str]) -> None:
    assert priority(record(line, level)) == want


def test_prefix_for_a_stream_journald_parses() -> None:
    """Without python3-systemd: ``<N>`` on every line of a record (a traceback too)."""
    fmt = PrefixFormatter("%(message)s")
    assert fmt.format(record("%FLOWPIN-5-752111: a\nb")) == "<5>%FLOWPIN-5-752111: a\n<5>b"


def test_journal_stream_is_recognised(tmp_path: Path) -> None:
    with open(tmp_path / "out", "w") as f, open(tmp_path / "other", "w") as g:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert connected_to_journal(f, env)
        assert not connected_to_journal(g, env)
        assert not connected_to_journal(f, {})


def test_errors_before_logging_is_set_up_are_errors_in_the_journal() -> None:
    """`flowpin daemon --check-config` under systemd: its error line carries <3>."""
    st = os.fstat(sys.stderr.fileno())
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    assert error_line("flowpin: error: x", env) == "<3>flowpin: error: x"
    assert error_line("flowpin: error: x", {}) == "flowpin: error: x"
