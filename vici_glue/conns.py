"""Site-to-site connection definitions, rendered for VICI (``load-conn``/``load-shared``).

One dataclass describes a gateway's side of a site-to-site IKEv2 tunnel. The lab loads it
over VICI; the VM provisioning renders the very same object as a swanctl.conf file, so the
configuration proven in the lab is the configuration deployed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
