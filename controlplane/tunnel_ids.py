"""Data-path ids of tunnels: stable across daemon restarts, reused once truly free.

A tunnel (connection/child) keeps its id for as long as it is configured, and the mapping
is kept next to the daemon's state, so that a restarted daemon finds its tunnels' flows
(pinned in bpffs) under the same ids. An id whose tunnel was removed is *retired*; it is
handed out again only after no flow carries it any more (flows are bound by id: a new
tunnel must never inherit an old one's flows or counters).

The id space is the data path's tunnel array minus id 0 (non-VPN traffic) and its last
entry (``FlowTable.refuse_id``, always DOWN). When every id is taken, a tunnel gets the
refusing id: its traffic is dropped by the data path, never passed in clear, and the
daemon logs and counts it instead of failing the whole batch of tunnels.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

TunnelKey = tuple[str, str]  # (connection, child), as in controlplane.tunnel


class TunnelIds:
    def __init__(self, path: Path, refuse_id: int = 4095) -> None:
        self.path = path
        self.refuse_id = refuse_id
        self.ids: dict[str, int] = {}
        self.retired: set[int] = set()
        self._deferred = 0  # inside batch(): saved once at its end
        self._dirty = False
        self._used: set[int] | None = None  # see __call__
        self._low = 1
        try:
            doc = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            doc = {}
        if isinstance(doc, dict) and isinstance(doc.get("ids"), dict):
            self.ids = {str(k): v for k, v in doc["ids"].items() if isinstance(v, int)}
            self.retired = {v for v in doc.get("retired", []) if isinstance(v, int)}
        elif isinstance(doc, dict):  # the first format: {name: id}
            self.ids = {str(k): v for k, v in doc.items() if isinstance(v, int)}

    @staticmethod
    def name(key: TunnelKey) -> str:
        return f"{key[0]}/{key[1]}"

    def __call__(self, key: TunnelKey) -> int:
        """The id of ``key``: its own if it has one (also while retired: a tunnel that
        comes back gets its id back), else the lowest free one, else ``refuse_id``."""
        name = self.name(key)
        if name in self.ids and 0 < self.ids[name] < self.refuse_id:
            self.retired.discard(self.ids[name])
            return self.ids[name]
        # The ids in use and the lowest id that may be free, kept between calls: a resync
        # finding 1,000 new tunnels built the set and scanned from 1 for each (quadratic).
        if self._used is None:
            self._used, self._low = set(self.ids.values()), 1
        used = self._used
        new = next((i for i in range(self._low, self.refuse_id) if i not in used), None)
        if new is None:
            return self.refuse_id  # not stored: a later call tries again
        self.ids[name] = new
        used.add(new)
        self._low = new + 1
        self._save()
        return new

    def retire(self, key: TunnelKey) -> None:
        """``key`` is no longer configured: its id is freed once no flow carries it."""
        tid = self.ids.get(self.name(key))
        if tid is not None and tid not in self.retired:
            self.retired.add(tid)
            self._save()

    def free_unused(self, in_use: set[int]) -> list[int]:
        """Free the retired ids that no flow carries (``in_use``: ids seen in the flow
        table). Returns the ids freed."""
        freed = sorted(self.retired - in_use)
        if not freed:
            return []
        self.ids = {n: i for n, i in self.ids.items() if i not in freed}
        self._used = None  # rebuilt at the next call, from 1
        self.retired -= set(freed)
        self._save()
        return freed

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Ids handed out inside are saved once, when the block ends (also on an error):
        a resync finding 1,000 new tunnels wrote the whole file after each, a second of
        JSON. The caller writes no map with these ids before the block has ended, so a
        daemon that dies never leaves an id in the data path that the file lacks."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred and self._dirty:
                self._save()

    def _save(self) -> None:
        if self._deferred:
            self._dirty = True
            return
        self._dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ids": self.ids, "retired": sorted(self.retired)},
                                  indent=1))
        tmp.replace(self.path)
