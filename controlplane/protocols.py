"""The IP protocols flowpin tracks, named once for the whole control plane: how the CLI
takes them (``clear conn --protocol``), how ``show conn`` and the log lines print them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    number: int
    name: str  # the CLI's spelling: tcp, udp, icmp, icmp6
    label: str  # as show conn and the log lines print it
    # The ASA's teardown messages know TCP, UDP and ICMP only: an ICMPv6 flow's teardown
    # says ICMP (message 302021), so that log parsers written for the ASA read it.
    teardown_label: str


PROTOCOLS = (
    Protocol(6, "tcp", "TCP", "TCP"),
    Protocol(17, "udp", "UDP", "UDP"),
    Protocol(1, "icmp", "ICMP", "ICMP"),
    Protocol(58, "icmp6", "ICMP6", "ICMP"),
)
BY_NUMBER = {p.number: p for p in PROTOCOLS}
BY_NAME = {p.name: p for p in PROTOCOLS}
TCP, UDP = 6, 17
ICMP_NUMBERS = frozenset({1, 58})


def name(number: int) -> str:
    """``tcp``, ``udp``, … or the number for a protocol flowpin does not name."""
    p = BY_NUMBER.get(number)
    return p.name if p else str(number)


def label(number: int) -> str:
    """``TCP``, ``UDP``, … or the number for a protocol flowpin does not name."""
    p = BY_NUMBER.get(number)
    return p.label if p else str(number)


def teardown_label(number: int) -> str:
    p = BY_NUMBER.get(number)
    return p.teardown_label if p else str(number)


def number(name: str) -> int:
    """The protocol number of a CLI name (case-insensitive); ValueError if unknown."""
    p = BY_NAME.get(name.lower())
    if p is None:
        raise ValueError(f"unknown protocol {name!r}")
    return p.number


def port(value: object) -> int:
    """A TCP/UDP port an admin typed (``show conn port 443``); ValueError saying what is
    wrong with it."""
    try:
        number = int(str(value))
    except ValueError:
        raise ValueError(f"port {value!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range 0-65535")
    return number
