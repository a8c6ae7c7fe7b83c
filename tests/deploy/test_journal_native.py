"""The daemon's own logging setup under systemd sends each line to journald over the
journal's native protocol, with its syslog PRIORITY and its message id. Run in a private
mount namespace whose /run holds a socket the test binds in place of journald's (root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf  # root, no charon

REPO = Path(__file__).resolve().parents[2]


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
    if os.geteuid() != 0:
        pytest.fail("root is needed (a private mount namespace for /run)", pytrace=False)
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount --make-rprivate / && mount -t tmpfs tmpfs /run '
         '&& exec "$0" -c "$1"', sys.executable, _CHILD],
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
