"""The daemon's configuration: TOML (stdlib ``tomllib``), validated into typed values.

A broken file is refused with its path, line and key (:class:`ConfigError`); the caller
keeps the configuration it runs with. ``controlplane/flowpin.example.toml`` documents every
key and is itself tested to load.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.durations import Timeouts, parse_duration
from controlplane.tcx import ATTACH_MODES

EXAMPLE = Path(__file__).with_name("flowpin.example.toml")
# What the packaged /etc/flowpin/flowpin.toml puts where an admin must choose (an interface
# name): a value still starting with it is refused by name, not tried as a real value that
# would fail later and less clearly.
PLACEHOLDER = "CHANGE-ME"


class ConfigError(ValueError):
    """``<file>:<line>: <key>: <what is wrong>``."""

    def __init__(self, path: str, line: int | None, key: str, message: str) -> None:
        self.path, self.line, self.key = path, line, key
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass(frozen=True)
class TunnelOverride:
    conn: str
    child: str = "*"
    preserve_vpn_flows: bool | None = None
    initiate_on_demand: bool | None = None
    resume_kick: bool | None = None

    def matches(self, conn: str, child: str) -> bool:
        return self.conn == conn and self.child in ("*", child)


@dataclass(frozen=True)
class Config:
    path: str = ""
    instance: str = "default"
    preserve_vpn_flows: bool = False  # the ASA's default: off
    reclassify_vpn: bool = True  # the ASA's default: on
    initiate_on_demand: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    vici_socket: str = "/var/run/charon.vici"
    control_socket: str = ""  # default: /run/flowpin/<instance>.sock
    lan_interfaces: tuple[str, ...] = ()
    wan_interfaces: tuple[str, ...] | None = None  # None: found from the routing table
    forget_unconfigured_after: float = 600.0
    hooks_watch_interval: float = 0.5  # 0: off
    attach: str = "auto"  # TC hooks: tcx links where the kernel has them, else clsact
    btf: bool = True  # compile the programs with BTF (type and line info for bpftool)
    flow_table_size: int = 1 << 20
    nonvpn_flow_share: int = 50  # percent of the flow table non-VPN flows may take
    pickup_window: float = 30.0
    sweep_interval: float = 1.0
    demand_backoff_min: float = 1.0
    demand_backoff_max: float = 30.0
    log_level: str = "info"
    log_file: str = ""  # empty: stdout (journald under systemd)
    metrics_listen: str = ""  # e.g. "127.0.0.1:9477"; empty: off
    resume_kick: bool = True  # answer held segments with an ICMP unreachable (kick.h)
    kick_interval: float = 0.1  # at most one kick per flow per interval
    kick_budget: int = 1000  # at most this many kicks per second in all
    tunnels: tuple[TunnelOverride, ...] = ()

    @property
    def control_path(self) -> str:
        return self.control_socket or f"/run/flowpin/{self.instance}.sock"

    def preserve_for(self, conn: str, child: str) -> bool:
        for t in self.tunnels:
            if t.matches(conn, child) and t.preserve_vpn_flows is not None:
                return t.preserve_vpn_flows
        return self.preserve_vpn_flows

    def kick_for(self, conn: str, child: str) -> bool:
        for t in self.tunnels:
            if t.matches(conn, child) and t.resume_kick is not None:
                return t.resume_kick
        return self.resume_kick

    def initiate_for(self, conn: str, child: str) -> bool:
        for t in self.tunnels:
            if t.matches(conn, child) and t.initiate_on_demand is not None:
                return t.initiate_on_demand
        return self.initiate_on_demand


# section -> key -> (attribute, kind)
SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "sysopt": {
        "preserve-vpn-flows": ("preserve_vpn_flows", "bool"),
        "reclassify-vpn": ("reclassify_vpn", "bool"),
    },
    "timeouts": {
        "conn": ("conn", "duration"),
        "half-closed": ("half_closed", "duration"),
        "udp": ("udp", "duration"),
        "icmp": ("icmp", "duration"),
        "embryonic": ("embryonic", "duration"),
        "closed": ("closed", "duration"),
    },
    "vici": {"socket": ("vici_socket", "str")},
    "datapath": {
        "instance": ("instance", "name"),
        "lan-interfaces": ("lan_interfaces", "strlist"),
        "wan-interfaces": ("wan_interfaces", "strlist"),
        "forget-unconfigured-after": ("forget_unconfigured_after", "duration"),
        "hooks-watch-interval": ("hooks_watch_interval", "duration"),
        "attach": ("attach", "attach"),
        "btf": ("btf", "bool"),
        "flow-table-size": ("flow_table_size", "size"),
        "nonvpn-flow-share": ("nonvpn_flow_share", "percent"),
        "pickup-window": ("pickup_window", "duration"),
        "sweep-interval": ("sweep_interval", "duration"),
    },
    "demand": {
        "initiate": ("initiate_on_demand", "bool"),
        "backoff-min": ("demand_backoff_min", "duration"),
        "backoff-max": ("demand_backoff_max", "duration"),
    },
    "resume": {
        "kick": ("resume_kick", "bool"),
        "kick-interval": ("kick_interval", "duration"),
        "kick-budget": ("kick_budget", "size"),
    },
    "control": {"socket": ("control_socket", "str")},
    "logging": {"level": ("log_level", "level"), "file": ("log_file", "str")},
    "metrics": {"listen": ("metrics_listen", "hostport")},
}
TUNNEL_KEYS = {"conn": "str", "child": "str", "preserve-vpn-flows": "bool",
               "initiate-on-demand": "bool", "resume-kick": "bool"}
LEVELS = ("debug", "info", "warning", "error")
INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def _top_line(text: str, key: str) -> int | None:
    """The line of a top-level ``key = ...`` or of a ``[key]``/``[[key]]`` header."""
    top = True
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if re.match(rf"^\[\[?\s*{re.escape(key)}\s*\]\]?", line):
            return n
        if line.startswith("["):
            top = False  # past the top level: only a header can match now
        elif top and re.match(rf"^\"?{re.escape(key)}\"?\s*=", line):
            return n
    return None


def _line_of(text: str, section: str, key: str, index: int | None = None) -> int | None:
    """The line of ``key`` in ``[section]`` (or the ``index``-th ``[[section]]``)."""
    current, seen = None, -1
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"^\[\[\s*([\w.-]+)\s*\]\]", line) or re.match(r"^\[\s*([\w.-]+)\s*\]",
                                                                    line)
        if m:
            current = m.group(1)
            if line.startswith("[[") and current == section:
                seen += 1
            continue
        if current == section and (index is None or seen == index) and re.match(
                rf"^\"?{re.escape(key)}\"?\s*=", line):
            return n
    if key == "":
        for n, raw in enumerate(text.splitlines(), 1):
            if raw.strip().strip("[]").strip() == section:
                return n
    return None


def _key_at(text: str, line: int | None) -> str:
    """``section.key`` of the assignment on ``line`` (for syntax errors), or ''."""
    lines = text.splitlines()
    if not line or line > len(lines):
        return ""
    m = re.match(r"^\s*\"?([\w-]+)\"?\s*=", lines[line - 1])
    if not m:
        return ""
    for raw in reversed(lines[: line - 1]):
        h = re.match(r"^\s*\[+\s*([\w.-]+)\s*\]+", raw)
        if h:
            return f"{h.group(1)}.{m.group(1)}"
    return m.group(1)


def _convert(kind: str, value: Any) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    if kind == "name":
        # It names a directory (/sys/fs/bpf/flowpin/<instance>, which --purge removes):
        # "." or ".." would be the bpffs root or every instance's parent.
        if not isinstance(value, str) or not INSTANCE_RE.match(value):
            raise ValueError("must be 1-32 letters, digits, '_', '.', '-', starting with a "
                             "letter or digit")
        return value
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError("must be a list of names")
        return tuple(value)
    if kind == "duration":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError('must be "h:mm:ss" or a number of seconds')
        try:
            return parse_duration(value)
        except ValueError:
            raise ValueError(f'{value!r}: must be "h:mm:ss" or a number of seconds') from None
    if kind == "size":
        if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 1 << 26:
            raise ValueError("must be an integer from 16 to 67108864")
        return value
    if kind == "percent":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise ValueError("must be an integer percentage from 1 to 100")
        return value
    if kind == "attach":
        if value not in ATTACH_MODES:
            raise ValueError(f"must be one of {', '.join(ATTACH_MODES)}")
        return value
    if kind == "level":
        if value not in LEVELS:
            raise ValueError(f"must be one of {', '.join(LEVELS)}")
        return value
    if kind == "hostport":
        # No host (":9477" or "9477"): loopback.
        if not isinstance(value, str) or (value and not re.match(r"^([\w.:\[\]-]*:)?\d+$",
                                                                  value)):
            raise ValueError('must be "host:port", "port" (loopback) or "" (off)')
        return value
    raise AssertionError(kind)


def parse(text: str, path: str = "<config>") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else None
        raise ConfigError(path, line, _key_at(text, line), f"not valid TOML: {exc}") from exc
    values: dict[str, Any] = {"path": path}
    timeouts: dict[str, float] = {}
    for section, body in doc.items():
        if section == "tunnel":
            continue
        if section not in SCHEMA:
            raise ConfigError(path, _line_of(text, section, ""), section, "unknown section")
        if not isinstance(body, dict):
            raise ConfigError(path, _top_line(text, section), section,
                              f"must be a table ([{section}])")
        for key, value in body.items():
            if key not in SCHEMA[section]:
                raise ConfigError(path, _line_of(text, section, key), f"{section}.{key}",
                                  "unknown key")
            attr, kind = SCHEMA[section][key]
            held = next((v for v in (value if isinstance(value, list) else [value])
                         if isinstance(v, str) and v.startswith(PLACEHOLDER)), None)
            if held is not None:
                raise ConfigError(path, _line_of(text, section, key), f"{section}.{key}",
                                  f'"{held}" is a placeholder of the packaged file: replace '
                                  "it (the comment above it says with what)")
            try:
                conv = _convert(kind, value)
            except ValueError as exc:
                raise ConfigError(path, _line_of(text, section, key), f"{section}.{key}",
                                  str(exc)) from exc
            if section == "timeouts":
                timeouts[attr] = conv
            else:
                values[attr] = conv
    tunnels = []
    raw_tunnels = doc.get("tunnel", [])
    if not isinstance(raw_tunnels, list):
        raise ConfigError(path, _top_line(text, "tunnel"), "tunnel",
                          "use [[tunnel]] (an array of tables)")
    for i, t in enumerate(raw_tunnels):
        if not isinstance(t, dict):
            raise ConfigError(path, _top_line(text, "tunnel"), f"tunnel[{i}]",
                              "must be a table: use [[tunnel]] with conn = \"<name>\"")
        for key, value in t.items():
            if key not in TUNNEL_KEYS:
                raise ConfigError(path, _line_of(text, "tunnel", key, i), f"tunnel[{i}].{key}",
                                  "unknown key")
            try:
                _convert(TUNNEL_KEYS[key], value)
            except ValueError as exc:
                raise ConfigError(path, _line_of(text, "tunnel", key, i),
                                  f"tunnel[{i}].{key}", str(exc)) from exc
        if "conn" not in t:
            raise ConfigError(path, _line_of(text, "tunnel", "", i), f"tunnel[{i}]",
                              "needs conn = \"<connection name>\"")
        tunnels.append(TunnelOverride(t["conn"], t.get("child", "*"),
                                      t.get("preserve-vpn-flows"), t.get("initiate-on-demand"),
                                      t.get("resume-kick")))
    values["tunnels"] = tuple(tunnels)
    if values.get("demand_backoff_min", 1.0) > values.get("demand_backoff_max", 30.0):
        raise ConfigError(path, _line_of(text, "demand", "backoff-min"), "demand.backoff-min",
                          "larger than demand.backoff-max")
    return Config(timeouts=Timeouts(**timeouts), **values)


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), None, "", f"cannot read: {getattr(exc, 'strerror', exc)}"
                          ) from exc
    try:
        return parse(text, str(p))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a shape parse() did not foresee
        # Still a ConfigError: the daemon keeps the configuration it runs with.
        raise ConfigError(str(p), None, "", f"not a flowpin configuration ({type(exc).__name__}"
                          f": {exc})") from exc


def check_runnable(cfg: Config) -> None:
    """What a valid file may leave out but a daemon cannot run without."""
    if not cfg.lan_interfaces:
        try:
            line = _line_of(Path(cfg.path).read_text(), "datapath", "lan-interfaces")
        except (OSError, UnicodeDecodeError):
            line = None
        raise ConfigError(cfg.path, line, "datapath.lan-interfaces",
                          "name at least one LAN interface")


def check(path: str | Path) -> Config:
    """``flowpin daemon --check-config``: everything the daemon checks of its configuration
    before it touches the data path (:class:`ConfigError` names file, line and key)."""
    cfg = load(path)
    check_runnable(cfg)
    return cfg
