"""Logging to the systemd journal, each line at its own syslog priority.

flowpin's lines carry the ASA's syslog severity in their text (``%FLOWPIN-5-752111: …``);
the journal must carry the same number as PRIORITY, so that ``journalctl -p warning`` (or
``-p 5``) selects what an ASA admin's syslog filter would. Python's logging levels have no
NOTICE, so the priority is read from the line itself, not from the logging level.

Under systemd (stdout or stderr connected to the journal, as ``$JOURNAL_STREAM`` says) the
lines go over the journal's native protocol (python3-systemd's ``journal.send``), with the
message id as a field of its own: ``journalctl -u flowpin FLOWPIN_ID=302014``. Without
python3-systemd they go to the same stream with the ``<N>`` prefix that journald parses
(``SyslogLevelPrefix=``, on by default). Elsewhere (a terminal, a file) nothing changes.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

_LINE = re.compile(r"%FLOWPIN-([0-7])-(\d+):")
# Lines without an ASA id (a library's, a traceback's): syslog's number for the level.
_PY_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                logging.INFO: 6, logging.DEBUG: 7}
IDENTIFIER = "flowpin"


def priority(record: logging.LogRecord) -> tuple[int, str]:
    """(syslog priority, ASA message id or '') of ``record``."""
    m = _LINE.search(record.getMessage())
    if m:
        return int(m.group(1)), m.group(2)
    level = max((lv for lv in _PY_PRIORITY if lv <= record.levelno), default=logging.DEBUG)
    return _PY_PRIORITY[level], ""


def connected_to_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd gave this service: the
    ``device:inode`` pair in ``$JOURNAL_STREAM`` is the stream's (see systemd.exec(5))."""
    env = os.environ if env is None else env
    want = env.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


class JournalHandler(logging.Handler):
    """One journal entry per record over the native protocol, PRIORITY from the line."""

    def __init__(self) -> None:
        super().__init__()
        from systemd import journal

        self._send = journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prio, msg_id = priority(record)
            fields = {"PRIORITY": str(prio), "SYSLOG_IDENTIFIER": IDENTIFIER,
                      "CODE_FILE": record.pathname, "CODE_LINE": record.lineno,
                      "CODE_FUNC": record.funcName, "LOGGER": record.name,
                      "THREAD_NAME": record.threadName}
            if msg_id:
                fields["FLOWPIN_ID"] = msg_id
            self._send(self.format(record), **fields)
        except Exception:  # noqa: BLE001 -- logging's own error path
            self.handleError(record)


class PrefixFormatter(logging.Formatter):
    """``<N>`` before each line: journald reads it as the line's priority and strips it."""

    def format(self, record: logging.LogRecord) -> str:
        prio, _ = priority(record)
        text = super().format(record)
        # A traceback spans lines: each one is an entry of its own, at the same priority.
        return "\n".join(f"<{prio}>{ln}" for ln in text.splitlines())


def journal_handler(env: Mapping[str, str] | None = None) -> logging.Handler | None:
    """A handler for the journal when this process logs to it, else None."""
    stream = next((s for s in (sys.stdout, sys.stderr) if connected_to_journal(s, env)), None)
    if stream is None:
        return None
    try:
        handler: logging.Handler = JournalHandler()
    except ImportError:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PrefixFormatter("%(message)s"))
        return handler
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def error_line(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` for stderr, as an error (``<3>``) when stderr is the journal: the lines
    printed before logging is set up (a configuration that does not load, a daemon that
    cannot start) are errors too, not the stream's default priority (info)."""
    return f"<3>{text}" if connected_to_journal(sys.stderr, env) else text
