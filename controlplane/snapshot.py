"""What a read-only control command sees: the daemon's state at one instant, taken on the
loop in microseconds and read afterwards in the command's own thread, so that ``show conn``
over a million flows never holds up an SA event.

The maps are not copied: ``table`` is the live handle (reads beside the writers are safe,
each entry is read whole), ``now_s`` the data path's clock, ``counts`` the sweeper's
per-tunnel flow counts (a reference: the sweeper replaces them whole).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane import sysopt
from controlplane.config import Config
from controlplane.demand import Demand
from controlplane.flow_counts import FlowCounts
from controlplane.flow_table import FlowTable
from controlplane.tunnel import Tunnel, TunnelKey


@dataclass(frozen=True)
class Snapshot:
    cfg: Config
    sysopt: Mapping[str, Any]  # run-time sysopt values (a copy)
    tunnels: tuple[Tunnel, ...]  # the registry's tunnels (copies), by id
    demand: Mapping[TunnelKey, Demand]  # initiation on demand (copies)
    stats: Mapping[str, int]
    latency_ms: tuple[float, ...]  # event received -> map written
    latency_histogram: Mapping[str, Any]  # the same, cumulative (metrics.Latency.histogram)
    charon_up: bool
    ipsec_backend: str
    started: float  # time.time() at daemon start
    wan_guarded: tuple[str, ...]
    last_problem: tuple[float, str] | None  # (time.time(), line): last WARNING or worse
    resumed: Mapping[int, tuple[int, int]]  # tunnel id -> (resumed, held) over its outages
    table: FlowTable
    now_s: Callable[[], int]
    counts: FlowCounts = field(default_factory=FlowCounts)  # per tunnel, as of the last sweep
    attach: str = "clsact"  # the data path's attach mode: "tcx" or "clsact"
    attach_why: str = ""  # the probe's answer, as the start log says it
    # (interface, hook) -> a new fd of flowpin's tcx link there (tcx mode), else None
    link_fd: Callable[[str, str], int | None] | None = None

    def __post_init__(self) -> None:
        # show conn asks for each flow's tunnel: a dict, not a walk of 1,000 tunnels a flow
        object.__setattr__(self, "_by_id", {t.tunnel_id: t for t in self.tunnels})

    def by_id(self, tunnel_id: int) -> Tunnel | None:
        return self._by_id.get(tunnel_id)  # type: ignore[attr-defined, no-any-return]

    def tunnel_named(self, name: str) -> Tunnel:
        """The tunnel an admin names: ``conn/child``, ``conn`` or its id."""
        for t in self.tunnels:
            if name in (t.name, t.key[0], str(t.tunnel_id)):
                return t
        raise ValueError(f"no tunnel {name!r} (see: flowpin show vpn-context)")

    def preserve_for(self, key: TunnelKey) -> bool:
        return sysopt.preserve_for(self.cfg, self.sysopt, key)

    def reclassify(self) -> bool:
        return sysopt.reclassify(self.cfg, self.sysopt)
