"""The control commands: each registered once, with whether it only reads beside it; every
command the CLI sends exists, and what only reads never runs on the daemon's loop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import controlplane
from controlplane import commands

READS = {"show-conn", "show-vpn-context", "show-sysopt", "show-counters", "metrics", "status"}
CHANGES = {"sysopt", "clear-conn", "reload"}


def test_each_command_declares_whether_it_only_reads() -> None:
    assert {n for n, c in commands.COMMANDS.items() if c.read_only} == READS
    assert {n for n, c in commands.COMMANDS.items() if not c.read_only} == CHANGES
    for name, cmd in commands.COMMANDS.items():
        assert cmd.name == name and cmd.run.__doc__, f"{name}: say what it answers"


def test_every_command_the_cli_sends_is_registered() -> None:
    cli = (Path(controlplane.__file__).parent / "cli.py").read_text()
    sent = set(re.findall(r'_ask\(a, "([a-z-]+)"', cli))
    assert sent and sent <= set(commands.COMMANDS)


def test_unknown_and_twice_registered_commands_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown command 'show-everything'"):
        commands.lookup("show-everything")
    with pytest.raises(RuntimeError, match="registered twice"):
        commands.reads("status")(lambda s, a: {})


def test_event_to_map_figures_can_cover_only_the_events_after_an_earlier_answer() -> None:
    recent = (5.0, 1.0, 2.0, 3.0)  # the last 4 of 10 events measured
    assert commands.latency_since(recent, 10, None) == recent
    assert commands.latency_since(recent, 10, 8) == (2.0, 3.0)
    assert commands.latency_since(recent, 10, 10) == ()
    assert commands.latency_since(recent, 10, 0) == recent  # older ones were not kept
    for bad in (-1, "3", True, 1.5):
        with pytest.raises(ValueError, match="after: an event count"):
            commands.latency_since(recent, 10, bad)
