"""reclassify-vpn's clearing on the real maps (flows made by packets through the real
programs): the non-VPN flows a tunnel's selectors now cover go, VPN flows and non-VPN
flows outside them stay. (Conntrack's part is the lab's: tests/lab/test_reclassify.py.)"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controlplane import reclassify
from lab import packets as tr
from tests.datapath.cases import NET4, NET6, Net, handshake, out, run_steps

pytestmark = pytest.mark.bpf


@pytest.mark.parametrize("net", [NET4, NET6], ids=["v4", "v6"])
def test_only_covered_nonvpn_flows_are_cleared(dp: Any, net: Net,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reclassify, "clear_conntrack", lambda local, remote: 0)
    t = dp.table
    run_steps(dp, handshake(net) + [
        out(tr.tcp(net.c, net.n, 1000, 443, "A", seq=1, ack=1), "PASS_NONVPN"),  # covered
        out(tr.udp(net.c, net.n, 5000, 53), "PASS_NONVPN"),  # covered
        out(tr.tcp(net.o, net.n, 1001, 443, "A", seq=1, ack=1), "PASS_NONVPN"),  # not: o
    ])
    before = {(f.key.proto, f.tunnel_id, str(f.key.addr[0]), str(f.key.addr[1]))
              for f in t.flows()}
    assert len(before) == 4
    covers = ipaddress.ip_network(f"{net.n}/{24 if net.family == 4 else 64}", strict=False)
    vpn = ipaddress.ip_network(net.remote)  # the VPN flow's ends are covered too: it stays
    other = ipaddress.ip_network("198.51.100.0/24" if net.family == 6 else "2001:db8:1::/64")
    flows, ct = reclassify.clear(t, [ipaddress.ip_network(net.local)], [covers, vpn, other])
    assert (flows, ct) == (2, 0)
    left = sorted((f.tunnel_id, {str(a) for a in f.key.addr}) for f in t.flows())
    assert left == sorted([(1, {net.c, net.s}), (0, {net.o, net.n})])
