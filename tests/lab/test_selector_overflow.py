"""A conn with 5 local subnets beside the lab's, on a real charon and a real daemon.

Five local prefixes to the far LAN's 10.2.0.0/24, plus the lab's own pair to it, are more
pairs for one remote prefix than a trie entry holds. The five are one tunnel's: they are
merged until they fit (no 752115, nothing refused), the lab's tunnel comes up beside them
(one conn's selectors never stop another's), and nothing of either conn leaves bo-gw's WAN
in clear while their tunnels are down. Witness: tcpdump on bo-gw's WAN (what it sends).
(Pairs of different tunnels that cannot be merged are refused: tests/datapath.)
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from lab import topology
from lab.lab import PSK, Lab
from tests.conftest import lab_up, wait_for
from tests.lab.test_hooks import Capture
from vici_glue import session as vs
from vici_glue.conns import SiteToSite

pytestmark = pytest.mark.lab

GW = topology.BO_GW
SERVER4 = "10.2.0.10"
FIVE = SiteToSite(name="five", child="subnets", local_addrs=("192.0.2.1",),
                  remote_addrs=("192.0.2.2",), local_id="bo-gw-five", remote_id="ho-gw-five",
                  psk=PSK, local_ts=tuple(f"10.1.{i}.0/24" for i in range(1, 6)),
                  remote_ts=("10.2.0.0/24",))
# bo-client addresses in five's first and last subnets.
KEPT, REFUSED = "10.1.1.10", "10.1.5.10"


@pytest.fixture(scope="module")
def olab() -> Iterator[Lab]:
    with lab_up("ovf", daemon_options={"initiate": False}) as lab:
        for node, ifname, addrs in ((GW, topology.LAN_IF, ("10.1.1.1", "10.1.5.1")),
                                    (topology.CLIENT, "eth0", (KEPT, REFUSED))):
            with IPRoute(netns=lab.ns(node)) as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                for addr in addrs:
                    ipr.addr("add", index=idx, address=addr, prefixlen=24)
        yield lab


def tunnels(lab: Lab) -> dict[str, dict[str, Any]]:
    return {t["tunnel"]: t for t in lab.ask(GW, "show-vpn-context")["tunnels"]}


def test_five_local_subnets_beside_the_lab_conn(olab: Lab) -> None:
    lab = olab
    with lab.vici(GW) as s:
        vs.load(s, FIVE)
    # The daemon reads configured conns when it (re)connects to charon: restart it.
    lab.kill_daemon(GW, signal.SIGTERM)
    lab.start_daemon(GW)
    ts = wait_for(lambda: (t := tunnels(lab)).get("site/lan", {}).get("state") == "UP" and t,
                  15, "the lab's tunnel UP beside the five-subnet conn")
    assert ts["five/subnets"]["state"] == "DOWN"
    log = lab.daemon_log(GW).read_text()
    assert "752115" not in log
    daemon = lab.ask(GW, "metrics")["daemon"]
    assert daemon.get("selectors_refused", 0) == 0 and daemon["vici_decode_errors"] == 0
    assert ts["five/subnets"]["local_ts"] == [f"10.1.{i}.0/24" for i in range(1, 6)]
    # The lab's tunnel carries traffic.
    ok = lab.exec(topology.CLIENT, ["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER4],
                  stdout=subprocess.DEVNULL)
    assert ok.returncode == 0

    # Both tunnels down: nothing of theirs may leave in clear, whichever pair holds it.
    with lab.vici(GW) as s:
        vs.terminate(s, child=topology.CHILD)
    wait_for(lambda: tunnels(lab)["site/lan"]["state"] == "DOWN", 10, "site/lan DOWN")
    cap = Capture(lab)
    pings = [lab.popen(topology.CLIENT, ["ping", "-q", "-i", "0.02", "-I", src, SERVER4],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for src in ("10.1.0.10", KEPT, REFUSED)]
    try:
        time.sleep(3)
    finally:
        for p in pings:
            p.kill()
            p.wait()
        leaks = cap.stop()
    assert leaks == [], leaks[:10]
    counters = lab.ask(GW, "show-counters")
    assert counters["datapath"]["DROP_TUNNEL_DOWN"] > 0
