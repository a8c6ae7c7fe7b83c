"""Tunnel disruptions, the ways they happen in the field, for tests and the demo.

Every kind takes the tunnel down on one gateway (``gw``, bo-gw by default), keeps it down
for ``seconds`` (measured from the start of the disruption; a DPD outage lasts at least until
DPD has declared the peer dead), then ends the disruption and brings the tunnel back from
that gateway. :func:`flap` returns when both gateways have the CHILD_SA installed again.

- ``child``: terminate the CHILD_SA over VICI (the IKE_SA stays).
- ``ike``: terminate the IKE_SA over VICI (and with it the CHILD_SA).
- ``dpd``: drop IKE (UDP 500/4500) and ESP on the gateway's WAN with nftables until DPD
  declares the peer dead on both sides.
- ``restart-charon``: SIGKILL the gateway's charon, start it again after ``seconds``.
  Under kernel-netlink the XFRM states and policies it had installed are flushed with it
  (see :func:`lab.backend.flush`): the crash takes charon and all it owned,
  as it does under kernel-libipsec, where ESP runs inside charon.

Traffic, a trap policy or flowpin's own demand may bring a tunnel back before ``seconds``
are over for ``child`` and ``ike``; ``dpd`` and ``restart-charon`` cannot come back early.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lab import backend, nft, topology
from lab.lab import Lab, LabError
from lab.topology import CHILD, CONN, GATEWAYS, PEER
from vici_glue import session as vs

KINDS = ("child", "ike", "dpd", "restart-charon")
BLOCK_TABLE = "flowpin_lab_flap"


@dataclass
class FlapResult:
    how: str
    gw: str
    seconds: float
    down_at: float = 0.0  # monotonic time the disruption began (traffic stops)
    sa_gone_at: float = 0.0  # when ``gw`` had no CHILD_SA any more
    restored_at: float = 0.0  # when the disruption ended (unblock, restart, initiate)
    up_at: float = 0.0  # when both gateways had a CHILD_SA installed again
    events: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"how": self.how, "gw": self.gw, "seconds": self.seconds,
                "outage_s": round(self.up_at - self.down_at, 3),
                "sa_gone_after_s": round(self.sa_gone_at - self.down_at, 3),
                "reestablish_s": round(self.up_at - self.restored_at, 3),
                "events": self.events}


def _nft_rules(block: bool) -> list[str]:
    if not block:
        return [f"delete table inet {BLOCK_TABLE}"]
    rules = []
    for chain, hook in (("in", "input"), ("out", "output")):
        rules += [
            f"add chain inet {BLOCK_TABLE} {chain} {{ type filter hook {hook} priority -10; }}",
            f"add rule inet {BLOCK_TABLE} {chain} udp dport {{ 500, 4500 }} drop",
            f"add rule inet {BLOCK_TABLE} {chain} udp sport {{ 500, 4500 }} drop",
            f"add rule inet {BLOCK_TABLE} {chain} meta l4proto esp drop",
        ]
    return [f"add table inet {BLOCK_TABLE}"] + rules


def wan_block(lab: Lab, gw: str, block: bool) -> None:
    """Drop (or stop dropping) IKE and ESP on ``gw``'s WAN side."""
    err = nft.apply_in(lab.ns(gw), _nft_rules(block))
    if err and block:
        raise LabError(f"nftables in {gw}: {err}")


def flap(lab: Lab, how: str, seconds: float, gw: str = topology.BO_GW,
         timeout: float = 60.0) -> FlapResult:
    if how not in KINDS:
        raise LabError(f"--how must be one of {', '.join(KINDS)}")
    if gw not in GATEWAYS:
        raise LabError(f"--gw must be one of {', '.join(GATEWAYS)}")
    if seconds < 0:
        raise LabError("--seconds must be >= 0")
    lab.require_up()
    if not all(lab.child_installed(g) for g in GATEWAYS):
        raise LabError(f"the tunnel of lab {lab.name!r} is not up; nothing to flap "
                       f"(flowpin lab status --name {lab.name})")
    res = FlapResult(how, gw, seconds)
    start = res.down_at = time.monotonic()
    try:
        if how == "child":
            with lab.vici(gw) as s:
                vs.terminate(s, child=CHILD)
            res.events.append(f"terminated CHILD_SA {CHILD} on {gw}")
        elif how == "ike":
            with lab.vici(gw) as s:
                vs.terminate(s, ike=CONN)
            res.events.append(f"terminated IKE_SA {CONN} on {gw}")
        elif how == "dpd":
            wan_block(lab, gw, True)
            res.events.append(f"dropping IKE and ESP on {gw}'s WAN")
            # DPD must declare the peer dead on both sides before the outage can end.
            deadline = time.monotonic() + timeout
            # (New IKE_SAs may be CONNECTING meanwhile -- charon's dpd_action or flowpin's
            # demand -- and fail while the WAN drops them: only the established one counts.)
            while any("ESTABLISHED" in lab.ike_states(g) for g in (gw, PEER[gw])):
                if time.monotonic() > deadline:
                    raise LabError(f"DPD did not declare the peer dead within {timeout:.0f} s")
                time.sleep(0.2)
            res.events.append(f"DPD declared the peer dead after "
                              f"{time.monotonic() - start:.1f} s")
        elif how == "restart-charon":
            lab.charon(gw).kill()
            res.events.append(f"charon on {gw} killed (SIGKILL)")
            if lab.meta().get("backend") == backend.KERNEL_NETLINK:
                err = backend.flush(lab.ns(gw))
                if err:
                    raise LabError(f"flushing XFRM on {gw} after charon's death: {err}")
                res.events.append(f"XFRM states and policies it left on {gw} flushed")
        res.sa_gone_at = time.monotonic()
        remaining = seconds - (time.monotonic() - start)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        # End the disruption whatever happened: never leave a lab blocked or without charon.
        if how == "dpd":
            wan_block(lab, gw, False)
            res.events.append(f"WAN of {gw} open again")
        if how == "restart-charon" and not lab.charon(gw).running():
            lab.charon(gw).start()
            lab.load_conn(gw)
            res.events.append(f"charon on {gw} started again, configuration loaded over VICI")
    res.restored_at = time.monotonic()
    lab.bring_up(gw, timeout=timeout)
    res.up_at = time.monotonic()
    res.events.append(f"CHILD_SA installed on both gateways after "
                      f"{res.up_at - res.restored_at:.1f} s")
    return res
