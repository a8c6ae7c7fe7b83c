"""Ctrl-C and ``kill`` unwind the commands that build namespaces, so their cleanup runs.

Forked helpers (``netns.call``, pyroute2's namespace workers) inherit the handlers: in them
a signal must not unwind the parent's code (it would run the parent's cleanup -- and remove
the very namespaces the parent is using), so they just exit.
"""

from __future__ import annotations

import os
import signal

_owner = 0


def _handler(sig: int, _frame: object) -> None:
    if os.getpid() != _owner:
        os._exit(128 + sig)
    raise KeyboardInterrupt


def unwind_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the calling process (only), also when
    a parent shell started it with SIGINT ignored."""
    global _owner
    _owner = os.getpid()
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
