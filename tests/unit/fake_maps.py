"""An in-memory :class:`~controlplane.tunnel_maps.TunnelMaps`: the tunnel words and
selectors the daemon writes, kept in dicts, every write recorded in order. It stands for
the data path (the daemon's side effects), not for the daemon under test."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from controlplane.selectors import Overflow, Selector
from controlplane.tunnel_maps import DatapathTunnel


@dataclass
class Word:
    up: bool = False
    generation: int = 0
    preserve: bool = False


@dataclass
class FakeTunnelMaps:
    tunnels_max: int = 8
    words: dict[int, Word] = field(default_factory=dict)
    selectors: list[Selector] = field(default_factory=list)
    writes: list[tuple[str, int]] = field(default_factory=list)  # (what, tunnel id)
    reclassify: bool = True
    in_use: set[int] = field(default_factory=set)  # ids that flows carry
    stats_reset: list[int] = field(default_factory=list)
    fail_selectors: bool = False  # a compile that fails (the trie refuses the write)

    @property
    def refuse_id(self) -> int:
        return self.tunnels_max - 1

    def set_tunnel(self, tunnel_id: int, *, up: bool | None = None,
                   generation: int | None = None, preserve: bool | None = None) -> None:
        if not 0 <= tunnel_id < self.tunnels_max:
            raise ValueError(f"tunnel id {tunnel_id} out of range")
        w = self.words.setdefault(tunnel_id, Word())
        if up is not None:
            w.up = up
            self.writes.append(("up" if up else "down", tunnel_id))
        if generation is not None:
            w.generation = generation & 0xFFFFFFFF
            self.writes.append(("generation", tunnel_id))
        if preserve is not None:
            w.preserve = preserve

    @contextlib.contextmanager
    def tunnel_writes(self) -> Iterator[None]:
        """Writes recorded as they are made, the batch marked around them."""
        self.writes.append(("batch", 0))
        yield
        self.writes.append(("batch end", 0))

    def bump_generation(self, tunnel_id: int) -> int:
        gen = (self.tunnel(tunnel_id).generation + 1) & 0xFFFFFFFF
        self.set_tunnel(tunnel_id, generation=gen)
        return gen

    def tunnel(self, tunnel_id: int) -> DatapathTunnel:
        w = self.words.get(tunnel_id, Word())
        return DatapathTunnel(tunnel_id, w.up, w.generation, w.preserve, 0, 0)

    def tunnels(self) -> list[DatapathTunnel]:
        return [self.tunnel(tid) for tid in sorted(self.words)]

    def replace_selectors(self, selectors: Iterable[Selector]) -> list[Overflow]:
        if self.fail_selectors:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.selectors = list(dict.fromkeys(selectors))
        self.writes.append(("selectors", 0))
        self.bump_generation(0)  # as the data path: non-VPN flows are classified again
        return []

    def set_reclassify(self, on: bool) -> None:
        self.reclassify = on

    def reset_tunnel_stats(self, tunnel_id: int) -> None:
        self.stats_reset.append(tunnel_id)

    def tunnel_ids_in_use(self) -> set[int]:
        return set(self.in_use)
