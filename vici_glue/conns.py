"""Site-to-site connection definitions, rendered for VICI (``load-conn``/``load-shared``).

One dataclass describes a gateway's side of a site-to-site IKEv2 tunnel. The lab loads it
over VICI; the VM provisioning renders the very same object as a swanctl.conf file, so the
configuration proven in the lab is the configuration deployed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# A swanctl.conf value that needs no quoting (one `key = value` per line, `#` starts a
# comment, braces open and close sections).
_BARE = re.compile(r"^[A-Za-z0-9_.:/@%*+,= -]*$")


@dataclass(frozen=True)
class SiteToSite:
    """One gateway's view of a PSK IKEv2 site-to-site connection with one CHILD_SA."""

    name: str
    child: str
    local_addrs: tuple[str, ...]
    remote_addrs: tuple[str, ...]
    local_id: str
    remote_id: str
    psk: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    dpd_delay: str = "2s"
    dpd_timeout: str = "6s"  # IKEv1 only; IKEv2 uses charon.retransmit_*
    start_action: str = "none"
    dpd_action: str = "restart"
    close_action: str = "none"
    rekey_time: str = "1h"
    child_rekey_time: str = "20m"
    reauth_time: str = "0"
    keyingtries: int = 1
    unique: str = "replace"
    mobike: bool = False
    reqid: int = 0  # 0: charon assigns one (not stable across teardown)
    proposals: tuple[str, ...] = ("aes256-sha256-modp2048", "default")
    esp_proposals: tuple[str, ...] = ("aes256gcm16", "aes256-sha256", "default")
    extra: dict[str, Any] = field(default_factory=dict)

    def conn_message(self) -> dict[str, Any]:
        """The ``load-conn`` message: ``{name: {...}}``."""
        child: dict[str, Any] = {
            "local_ts": list(self.local_ts),
            "remote_ts": list(self.remote_ts),
            "esp_proposals": list(self.esp_proposals),
            "start_action": self.start_action,
            "dpd_action": self.dpd_action,
            "close_action": self.close_action,
            "rekey_time": self.child_rekey_time,
            "mode": "tunnel",
        }
        if self.reqid:
            child["reqid"] = str(self.reqid)
        conn: dict[str, Any] = {
            "version": "2",
            "local_addrs": list(self.local_addrs),
            "remote_addrs": list(self.remote_addrs),
            "proposals": list(self.proposals),
            "dpd_delay": self.dpd_delay,
            "dpd_timeout": self.dpd_timeout,
            "rekey_time": self.rekey_time,
            "reauth_time": self.reauth_time,
            "keyingtries": str(self.keyingtries),
            "unique": self.unique,
            "mobike": "yes" if self.mobike else "no",
            "local-1": {"auth": "psk", "id": self.local_id},
            "remote-1": {"auth": "psk", "id": self.remote_id},
            "children": {self.child: child},
        }
        conn.update(self.extra)
        return {self.name: conn}

    def shared_message(self) -> dict[str, Any]:
        """The ``load-shared`` message for this connection's PSK."""
        return {
            "id": f"psk-{self.name}",
            "type": "IKE",
            "data": self.psk,
            "owners": [self.local_id, self.remote_id],
        }

    def swanctl_conf(self) -> str:
        """This connection and its PSK as a swanctl.conf text (``connections`` and ``secrets``).

        The ``connections`` tree is :meth:`conn_message` itself: swanctl.conf's keys are the
        VICI keys and swanctl turns the file into the same ``load-conn`` message, so the file
        deployed on a gateway is the configuration the lab loads over VICI.
        """
        lines = ["# Written by flowpin (vici_glue.conns.SiteToSite.swanctl_conf): edit the",
                 "# generator, not this file.", "connections {"]
        _render_section(self.conn_message(), 1, lines)
        lines += [
            "}",
            "",
            "secrets {",
            f"    ike-{self.name} {{",
            f"        id-1 = {_swanctl_value(self.local_id)}",
            f"        id-2 = {_swanctl_value(self.remote_id)}",
            f"        secret = {_swanctl_secret(self.psk)}",
            "    }",
            "}",
            "",
        ]
        return "\n".join(lines)


def _swanctl_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_swanctl_value(v) for v in value)
    text = str(value)
    if _BARE.match(text) and text == text.strip():
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _swanctl_secret(psk: str) -> str:
    """A PSK as swanctl reads it back byte for byte: quoted, or hex when it could be taken
    for an encoding prefix (``0x``/``0s``) or holds characters a quoted string cannot."""
    if psk.startswith(("0x", "0s")) or not psk.isprintable() or '"' in psk or "\\" in psk:
        return "0x" + psk.encode().hex()
    return f'"{psk}"'


def _render_section(tree: dict[str, Any], depth: int, lines: list[str]) -> None:
    pad = "    " * depth
    for key, value in tree.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            _render_section(value, depth + 1, lines)
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key} = {_swanctl_value(value)}")
