"""The writes the daemon makes to the data path when tunnels change, as one interface:
:class:`~controlplane.flow_table.FlowTable` implements it on the real maps; the unit tests
implement it in memory to follow the daemon's transitions without root or a kernel."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from controlplane.selectors import Overflow, Selector


@dataclass(frozen=True)
class DatapathTunnel:
    """A tunnel as the data path holds it: its control word and counters."""


    id: int
    up: bool
    generation: int
    preserve: bool
    held: int
    refused: int

    @property
    def state(self) -> str:
        return "UP" if self.up else "DOWN"


@runtime_checkable
class TunnelMaps(Protocol):
    refuse_id: int  # the id whose entry stays DOWN: selectors pointing at it refuse

    def set_tunnel(self, tunnel_id: int, *, up: bool | None = None,
                   generation: int | None = None, preserve: bool | None = None) -> None:
        """Set a tunnel's control word in one write; None keeps a field's value."""

    @contextlib.contextmanager
    def tunnel_writes(self) -> Iterator[None]:
        """The control words set inside are written together when it ends (reads inside
        see them at once)."""
        yield

    def bump_generation(self, tunnel_id: int) -> int:
        """Tear down every flow of the tunnel in one write; returns the new generation."""

    def tunnel(self, tunnel_id: int) -> DatapathTunnel:
        """The tunnel's control word and counters."""

    def tunnels(self) -> list[DatapathTunnel]:
        """Every tunnel with a non-zero control word or counters."""

    def replace_selectors(self, selectors: Iterable[Selector]) -> list[Overflow]:
        """Make the selectors exactly these; returns what did not fit (refused)."""

    def set_reclassify(self, on: bool) -> None:
        """reclassify-vpn in the data path."""

    def reset_tunnel_stats(self, tunnel_id: int) -> None:
        """Zero the counters of an id handed to a new tunnel."""

    def tunnel_ids_in_use(self) -> set[int]:
        """Tunnel ids that at least one flow carries."""
