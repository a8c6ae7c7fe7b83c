"""sysopt: the options an admin changes at run time (``flowpin sysopt …``), over the
configuration file's values, kept in the daemon's state directory across restarts.

The values are a plain dict (what ``runtime.json`` holds); the functions read them with
the configuration as the default, so a snapshot of the dict answers as the daemon does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controlplane.config import Config
from controlplane.durations import format_duration
from controlplane.tunnel import TunnelKey

OPTIONS = ("preserve-vpn-flows", "reclassify-vpn")


def load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save(path: Path, values: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=1))
    tmp.replace(path)


def preserve_for(cfg: Config, values: Mapping[str, Any], key: TunnelKey) -> bool:
    """preserve-vpn-flows of one tunnel: set for the tunnel at run time, else in the
    configuration's tunnel overrides, else the global value (run time over file)."""
    per = values.get("preserve_tunnels", {}).get(f"{key[0]}/{key[1]}")
    if per is not None:
        return bool(per)
    for t in cfg.tunnels:
        if t.matches(*key) and t.preserve_vpn_flows is not None:
            return t.preserve_vpn_flows
    return bool(values.get("preserve_vpn_flows", cfg.preserve_vpn_flows))


def reclassify(cfg: Config, values: Mapping[str, Any]) -> bool:
    return bool(values.get("reclassify_vpn", cfg.reclassify_vpn))


def initiate_for(cfg: Config, values: Mapping[str, Any], key: TunnelKey) -> bool:
    initiate = values.get("initiate_tunnels", {}).get(f"{key[0]}/{key[1]}")
    return cfg.initiate_for(*key) if initiate is None else bool(initiate)


def shown(cfg: Config, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every sysopt in effect, as ``show sysopt`` answers."""
    per = dict(values.get("preserve_tunnels", {}))
    for t in cfg.tunnels:
        if t.preserve_vpn_flows is not None:
            per.setdefault(f"{t.conn}/{t.child}", t.preserve_vpn_flows)
    return {
        "preserve_vpn_flows": bool(values.get("preserve_vpn_flows", cfg.preserve_vpn_flows)),
        "reclassify_vpn": reclassify(cfg, values),
        "preserve_tunnels": per,
        "timeouts": {k: format_duration(v) for k, v in vars(cfg.timeouts).items()},
        "config": cfg.path,
    }


def set_option(values: dict[str, Any], option: str, on: bool, tunnel: str | None) -> None:
    """Change ``option`` in ``values`` (``tunnel``: a tunnel's name, for the options that
    have one per tunnel); ValueError for what does not exist."""
    if option == "preserve-vpn-flows":
        if tunnel:
            values.setdefault("preserve_tunnels", {})[tunnel] = on
        else:
            values["preserve_vpn_flows"] = on
    elif option == "reclassify-vpn":
        if tunnel:
            raise ValueError("reclassify-vpn is global (no --tunnel)")
        values["reclassify_vpn"] = on
    else:
        raise ValueError(f"unknown sysopt {option!r}")
