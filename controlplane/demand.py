"""Initiation on demand: a tunnel that is DOWN while its traffic waits has its CHILD_SA
initiated, with exponential backoff between attempts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Demand:
    """Initiation on demand for one tunnel: exponential backoff between attempts."""

    backoff: float
    next_at: float = 0.0
    running: bool = False
    attempts: int = 0
    last_error: str = ""
