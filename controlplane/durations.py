"""Durations and idle timeouts, as an ASA admin writes them (``h:mm:ss``) and as the
configuration, the sweeper, the log lines and the ``show`` commands use them."""

from __future__ import annotations

from dataclasses import dataclass, fields


def parse_duration(value: str | float | int) -> float:
    """Seconds from an ASA ``h:mm:ss`` (or ``m:ss``) string, or a number of seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative timeout {value}")
        return float(value)
    text = value.strip()
    if ":" not in text:
        return parse_duration(float(text))
    parts = text.split(":")
    if len(parts) > 3 or any(not p.isdigit() for p in parts):
        raise ValueError(f"not an h:mm:ss duration: {value!r}")
    secs = 0
    for p in parts:
        secs = secs * 60 + int(p)
    return float(secs)


def format_duration(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds; defaults are the ASA's."""

    conn: float = 3600.0
    half_closed: float = 600.0
    udp: float = 120.0
    icmp: float = 2.0
    embryonic: float = 30.0
    closed: float = 10.0

    @classmethod
    def parse(cls, **values: str | float) -> Timeouts:
        """``Timeouts.parse(conn="1:00:00", udp=60)``: ASA strings or seconds."""
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown timeouts: {', '.join(sorted(unknown))}")
        return cls(**{k: parse_duration(v) for k, v in values.items()})
