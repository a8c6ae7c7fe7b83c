"""The selectors of every tunnel the daemon knows, kept in its state directory."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from controlplane.addresses import net_text
from controlplane.tunnel import TunnelKey


class KnownSelectors:
    """The selectors of every tunnel the daemon knows, kept beside its state so that a
    restarted daemon restores its tunnels (DOWN) before charon is heard -- a charon that
    is restarting too must not make them vanish from the data path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[TunnelKey, tuple[tuple[Any, ...], tuple[Any, ...]]]:
        try:
            raw = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        out = {}
        for entry in raw if isinstance(raw, list) else []:
            try:
                key = (str(entry["conn"]), str(entry["child"]))
                out[key] = (tuple(ipaddress.ip_network(n) for n in entry["local"]),
                            tuple(ipaddress.ip_network(n) for n in entry["remote"]))
            except (KeyError, TypeError, ValueError):
                continue  # a damaged entry: charon's listing will bring it back
        return out

    def save(self, tunnels: Any) -> None:
        data = [{"conn": t.key[0], "child": t.key[1], "local": [net_text(n) for n in t.local_ts],
                 "remote": [net_text(n) for n in t.remote_ts]} for t in tunnels]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))  # 1,000 tunnels on every change
        tmp.replace(self.path)
