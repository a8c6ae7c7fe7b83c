"""Each flowpin line reaches the journal at its ASA (syslog) severity.

The native-protocol test runs the daemon's own logging setup in a private mount namespace
whose /run/systemd/journal/socket is a datagram socket the test reads: the entries are
the bytes libsystemd sent, decoded as journald decodes them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
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


# Runs in the private mount namespace: bind the journal's socket, log through the daemon's
# own setup with stdout as "the journal stream", print the entries received as JSON.
_CHILD = r"""
import json, logging, os, socket, struct, sys
os.makedirs("/run/systemd/journal")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind("/run/systemd/journal/socket")
st = os.fstat(sys.stdout.fileno())
os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
from controlplane.config import Config
from controlplane.daemon import setup_logging
from controlplane.messages import Msg, Sev, emit, line
setup_logging(Config(log_level="debug"))
emit(Sev.NOTICE, Msg.CHARON_FOUND, "connected to charon")
emit(Sev.WARNING, Msg.TABLE_FULL, "flow table full")
logging.getLogger("flowpin").info(line(Sev.INFO, Msg.TEARDOWN_TCP, "Teardown TCP"))
try:
    raise RuntimeError("boom")
except RuntimeError:
    logging.getLogger("flowpin").exception("%s", line(Sev.ERROR, Msg.DAEMON, "internal"))
logging.getLogger("pyroute2").debug("library line")

def fields(data):
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        head = data[i:nl]
        if b"=" in head:
            k, v = head.split(b"=", 1)
            i = nl + 1
        else:  # KEY\n<le64 length><value>\n: a value with a newline
            k = head
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            v = data[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        out[k.decode()] = v.decode()
    return out

srv.settimeout(5)
entries = [fields(srv.recv(65536)) for _ in range(5)]
sys.stderr.write(json.dumps(entries))
"""


def test_entries_carry_priority_and_id_over_the_native_protocol() -> None:
    # A user namespace of its own (root mapped to the caller) lets any user mount the
    # private /run: the test needs no root. Root takes a plain mount namespace instead: the
    # kernel refuses a user namespace to a chrooted process (make fresh-check runs there).
    own_userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    r = subprocess.run(
        ["unshare", *own_userns, "--mount", "sh", "-c", 'mount --make-rprivate / && '
         'mount -t tmpfs tmpfs /run && exec "$0" -c "$1"', sys.executable, _CHILD],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    # Nothing on the stream itself: every line went to the journal.
    assert r.stdout == ""
    entries = json.loads(r.stderr)
    got = [(e["PRIORITY"], e.get("FLOWPIN_ID", ""), e["SYSLOG_IDENTIFIER"]) for e in entries]
    assert got == [("5", "752111", "flowpin"), ("4", "752107", "flowpin"),
                   ("6", "302014", "flowpin"), ("3", "752114", "flowpin"),
                   ("7", "", "flowpin")]
    assert entries[0]["MESSAGE"] == "%FLOWPIN-5-752111: connected to charon"
    # The traceback stays in its entry (a multi-line value), at the line's priority.
    assert "RuntimeError: boom" in entries[3]["MESSAGE"]
    assert entries[3]["MESSAGE"].startswith("%FLOWPIN-3-752114: internal\nTraceback")
