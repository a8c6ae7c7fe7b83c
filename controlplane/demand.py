"""Initiation on demand: a tunnel that is DOWN while its traffic waits (the data path's
DEMAND event) has its CHILD_SA initiated through charon, with exponential backoff between
attempts, as long as the tunnel stays DOWN and initiation is on for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane import sysopt
from controlplane.config import Config
from controlplane.messages import Msg, Sev, emit
from controlplane.tunnel import TunnelKey, TunnelRegistry
from vici_glue import session as vs


@dataclass
class Demand:
    """Initiation on demand for one tunnel: exponential backoff between attempts."""

    backoff: float
    next_at: float = 0.0
    running: bool = False
    attempts: int = 0
    last_error: str = ""


class Initiations:
    """The tunnels with traffic waiting. ``tick`` runs on the daemon's loop; each
    initiation runs in a thread of its own (charon may take seconds to answer)."""

    def __init__(self, cfg: Callable[[], Config], stats: dict[str, int]) -> None:
        self.cfg = cfg  # the configuration in effect (it changes on reload)
        self.stats = stats
        self.pending: dict[TunnelKey, Demand] = {}

    def wanted(self, key: TunnelKey) -> None:
        """Traffic waits for ``key``'s tunnel (DOWN): initiate it, now if not yet tried."""
        d = self.pending.setdefault(key, Demand(self.cfg().demand_backoff_min))
        d.next_at = d.next_at or time.monotonic()

    def satisfied(self, key: TunnelKey) -> None:
        """The tunnel came up."""
        self.pending.pop(key, None)

    def tick(self, now: float, registry: TunnelRegistry, values: Mapping[str, Any],
             charon_up: bool) -> None:
        """Start the initiations that are due (``values``: the run-time sysopt)."""
        cfg = self.cfg()
        for key, d in list(self.pending.items()):
            t = registry.get(key)
            if t is None or t.state == "UP":
                self.pending.pop(key, None)
                continue
            if d.running or not d.next_at or now < d.next_at:
                continue
            if not sysopt.initiate_for(cfg, values, key) or not charon_up:
                continue
            d.running, d.attempts = True, d.attempts + 1
            self.stats["initiations"] += 1
            emit(Sev.NOTICE, Msg.DEMAND_INITIATE, f"Tunnel {t.name} DOWN with traffic "
                 f"waiting: initiating its CHILD_SA (attempt {d.attempts})")
            threading.Thread(target=self._initiate, args=(key, d), daemon=True).start()

    def _initiate(self, key: TunnelKey, d: Demand) -> None:
        cfg = self.cfg()
        try:
            sess = vs.connect(cfg.vici_socket, timeout=2.0)
            try:
                vs.initiate(sess, key[1], key[0], timeout=10.0)
            finally:
                sess.transport.close()
            d.backoff = cfg.demand_backoff_min
            d.last_error = ""
        except (vs.ViciError, OSError) as exc:
            self.stats["initiation_failures"] += 1
            d.last_error = str(exc)
            d.backoff = min(d.backoff * 2, cfg.demand_backoff_max)
            emit(Sev.WARNING, Msg.INITIATE_FAILED, f"Tunnel {key[0]}/{key[1]}: initiation "
                 f"failed ({exc}); next attempt in {d.backoff:.0f} s")
        finally:
            d.next_at = time.monotonic() + d.backoff
            d.running = False
