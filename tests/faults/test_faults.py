"""Fail closed, proven under load: each fault runs while bo-client sends >= 20,000 packets/s
of mixed traffic (UDP, a new TCP connection every 100 ms, held TCP transfers, IPv4 and
IPv6) through the tunnel, with tcpdump on both gateways' WAN egress as the witness.

Each fault must leave: 0 cleartext packets with LAN addresses on either WAN (and a witness
that dropped nothing), every held transfer byte-exact, a new connection working after, and
the fault's own condition. The same runner is ``flowpin bench faults --json``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab import faults

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("name", [f.name for f in faults.FAULTS])
def test_fault(fault_lab: dict[str, Any], name: str) -> None:
    lab = fault_lab["lab"]
    res = faults.run_fault(lab, fault_lab["traffic"], faults.BY_NAME[name],
                           fault_lab["index"])
    fault_lab["index"] += 1
    if "heal_error" in res:  # the next fault needs a lab it can trust: build it again
        fault_lab["traffic"].close()
        lab.down()
        fault_lab["lab"] = faults.make_lab(lab.name)
        fault_lab["traffic"] = faults.Traffic(fault_lab["lab"])
    summary = {k: res[k] for k in ("outage_s", "cleartext", "generator", "transfers",
                                   "new_connection_after", "checks", "events")}
    summary["witness"] = {gw: {k: c[k] for k in ("captured", "dropped")}
                          for gw, c in res["capture"].items()}
    for key in ("leak_sample", "cleartext_by_proto", "cleartext_own"):
        if key in res:
            summary[key] = res[key]
    summary["fault"] = name
    print(json.dumps(summary))
    assert res["failures"] == [], json.dumps(summary, indent=1)
