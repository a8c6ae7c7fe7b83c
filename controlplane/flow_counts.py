"""Per-tunnel flow counts, kept by the sweeper's one pass over the flow table, so that a
metrics scrape, ``show vpn-context``, ``flowpin status`` and the tunnel UP/DOWN reports
read a few dict entries instead of decoding every flow in Python (~12 us and ~750 B a
flow: seconds of CPU and most of a GiB per read at a million flows).

What a count means, and when it is fresh:

- Counted at the sweeper's batch read of the table, less the flows that sweep removed:
  the table as it was at the end of the last sweep (``at``, every ``sweep-interval``,
  1 s by default, and right after each tunnel DOWN or removal). Flows created or removed
  on the packet path since then are not in it.
- Kept by (tunnel id, generation): a flow counts for its tunnel only while it is bound
  under the tunnel's *current* generation, read from the tunnel's control word at the
  time of the question. A teardown (new generation) therefore reads as 0 flows at once,
  before any sweep has removed them; a tunnel going down with preserve-vpn-flows keeps
  its generation, and its counted TCP flows are its held ones.
- ``held``: TCP flows of the current generation while the tunnel is DOWN and preserving
  them -- the flows ``show conn --pinned`` lists, as of the last sweep.
- ``bytes_out`` / ``bytes_in``: bytes the tunnel's current flows have carried from and to
  the LAN (each flow's own counters, which wrap at 1 TiB), as of the last sweep. A gauge:
  it drops when flows go. Cumulative tunnel traffic is charon's (CHILD_SA bytes).
- Tunnel 0 (traffic of no tunnel) is counted over every generation: its generation moves
  on each selector change only to have its flows classified again, not to end them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from controlplane.tunnel_maps import DatapathTunnel

# Index of each count in a binding's list (a list, not an object: the sweep adds to it
# once per flow).
FLOWS, TCP, BYTES_OUT, BYTES_IN = range(4)


@dataclass(frozen=True)
class TunnelCounts:
    flows: int = 0
    held: int = 0
    tcp: int = 0
    bytes_out: int = 0
    bytes_in: int = 0


@dataclass(frozen=True)
class FlowCounts:
    """The table as the last sweep left it (see the module's docstring)."""

    by_binding: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    total: int = 0  # every flow of both families
    at: float = 0.0  # time.time() of the sweep's read; 0: no sweep yet
    took_s: float = 0.0  # how long the sweep ran

    def tunnel(self, t: DatapathTunnel | None, tunnel_id: int) -> TunnelCounts:
        """The counts of tunnel ``tunnel_id``, whose control word now is ``t`` (None: never
        written, generation 0, DOWN)."""
        gen = t.generation if t else 0
        c = self.by_binding.get((tunnel_id, gen))
        if c is None:
            return TunnelCounts()
        held = c[TCP] if (t is not None and tunnel_id and not t.up and t.preserve) else 0
        return TunnelCounts(c[FLOWS], held, c[TCP], c[BYTES_OUT], c[BYTES_IN])

    def held(self, tunnels: dict[int, DatapathTunnel]) -> int:
        """Held flows of every tunnel."""
        return sum(self.tunnel(t, tid).held for tid, t in tunnels.items() if tid)

    def age_s(self) -> float | None:
        return round(time.time() - self.at, 3) if self.at else None


def merge_tunnel_zero(by_binding: dict[tuple[int, int], list[int]],
                      gen0: int) -> dict[tuple[int, int], list[int]]:
    """Fold every generation of tunnel 0 into ``(0, gen0)`` (see the module's docstring)."""
    zero = [0, 0, 0, 0]
    out: dict[tuple[int, int], list[int]] = {}
    for (tid, gen), c in by_binding.items():
        if tid == 0:
            zero = [a + b for a, b in zip(zero, c, strict=True)]
        else:
            out[(tid, gen)] = c
    if any(zero):
        out[(0, gen0)] = zero
    return out
