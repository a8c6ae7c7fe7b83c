"""preserve-vpn-flows in the lab, with real charons, real flowpin daemons and real TCP.

A rate-limited TCP transfer from bo-client to ho-server is in flight when the tunnel is
disrupted. With preserve on, it survives every kind of disruption and the bytes received
are exactly the bytes sent; with preserve off it is torn down and 302014 is logged.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab import attach
from lab.flap import flap, wan_block
from lab.lab import Lab
from lab.traffic import Transfer
from tests.conftest import wait_for

pytestmark = pytest.mark.lab

SERVER4 = "10.2.0.10"
_port = iter(range(6000, 7000))


def start_transfer(lab: Lab, nbytes: int = 3 << 20, rate: float = 300_000,
                   timeout: float = 90, to: str = SERVER4) -> Transfer:
    tr = Transfer(lab, to, nbytes, rate=rate, port=next(_port), timeout=timeout)
    time.sleep(1.5)  # well established, data flowing both ways
    return tr


def log_lines(lab: Lab, gw: str) -> list[str]:
    return lab.daemon_log(gw).read_text().splitlines()


def set_preserve(lab: Lab, on: bool) -> None:
    for gw in lab.flowpin_gateways():
        lab.ask(gw, "sysopt", {"option": "preserve-vpn-flows", "on": on})


@pytest.mark.parametrize("how", ["child", "ike", "dpd", "restart-charon"])
def test_transfer_survives_flap(plab: Lab, how: str) -> None:
    tr = start_transfer(plab)
    flap(plab, how, 2.0)
    sent, got = tr.wait(timeout=150)
    assert "error" not in sent and "error" not in got, (sent, got)
    assert got["bytes"] == sent["bytes"] == 3 << 20
    assert got["sha256"] == sent["sha256"]
    # The outage was seen, and the flow was pinned rather than torn down.
    lines = log_lines(plab, "bo-gw")
    assert any("752100" in ln and "pinned" in ln for ln in lines)
    assert not [ln for ln in lines if "302014" in ln and f"{SERVER4}/{tr.port} " in ln]


def test_pinned_flows_are_shown_and_held_while_down(plab: Lab) -> None:
    tr = start_transfer(plab)
    wan_block(plab, "bo-gw", True)
    try:
        ctx = wait_for(lambda: next((t for t in plab.ask("bo-gw", "show-vpn-context")["tunnels"]
                                     if t["state"] == "DOWN" and t["pinned"]), None),
                       30, "the tunnel to go DOWN with a pinned flow")
        assert ctx["preserve"] is True
        conns = plab.ask("bo-gw", "show-conn", {"pinned": True})["connections"]
        assert any(c["protocol"] == "TCP" and c["pinned"] and "PINNED" in c["flags"]
                   for c in conns)
        text = plab.exec("bo-gw", ["flowpin", "show", "vpn-context"], stdout=subprocess.PIPE,
                         text=True).stdout
        assert re.search(r"ENCR\+ESP\+PRESERVE, DOWN", text), text
        held = wait_for(lambda: plab.ask("bo-gw", "show-vpn-context")["tunnels"][0][
            "held_packets"], 20, "held packets")
        assert held > 0
    finally:
        wan_block(plab, "bo-gw", False)
    plab.bring_up("bo-gw")
    sent, got = tr.wait(timeout=150)
    assert got["bytes"] == sent["bytes"] and got["sha256"] == sent["sha256"]


def test_daemon_sigkilled_during_outage_resumes_held_flow(plab: Lab) -> None:
    tr = start_transfer(plab)
    wan_block(plab, "bo-gw", True)
    try:
        wait_for(lambda: plab.ask("bo-gw", "show-conn", {"pinned": True})["connections"],
                 30, "a pinned flow")
        plab.kill_daemon("bo-gw", signal.SIGKILL)
        time.sleep(1)
        plab.start_daemon("bo-gw")
        pinned = wait_for(lambda: plab.ask("bo-gw", "show-conn", {"pinned": True})[
            "connections"], 10, "the pinned flow after the restart")
        assert any(c["protocol"] == "TCP" for c in pinned)
        # the new daemon replaced the killed one's hooks in place, none created afresh
        # (tcx: its pinned links updated; clsact: its filters replaced)
        started = [ln for ln in plab.daemon_log("bo-gw").read_text().splitlines()
                   if "attached to lan0 with" in ln][-1]
        done = "updated in place" if attach.resolved() == "tcx" else "replaced in place"
        assert done in started and "created" not in started, started
    finally:
        wan_block(plab, "bo-gw", False)
    plab.bring_up("bo-gw")
    sent, got = tr.wait(timeout=150)
    assert got["bytes"] == sent["bytes"] and got["sha256"] == sent["sha256"]


def test_preserve_off_tears_down_with_302014(plab: Lab) -> None:
    set_preserve(plab, False)
    try:
        tr = start_transfer(plab, timeout=12)
        flap(plab, "dpd", 2.0)
        sent, got = tr.wait(timeout=150)
        assert got["bytes"] < sent["bytes"] or "error" in sent
        assert "error" in sent or "error" in got
        teardown = [ln for ln in log_lines(plab, "bo-gw")
                    if ln.startswith("%FLOWPIN-6-302014: Teardown TCP connection")
                    and ln.endswith("Tunnel has been torn down")]
        assert teardown, log_lines(plab, "bo-gw")[-20:]
        assert re.match(r"%FLOWPIN-6-302014: Teardown TCP connection \d+ for "
                        r"vpn-site:10\.2\.0\.10/\d+ to lan0:10\.1\.0\.10/\d+ duration "
                        r"\d+:\d\d:\d\d bytes \d+ Tunnel has been torn down", teardown[-1])
    finally:
        set_preserve(plab, True)


def test_toggle_at_runtime_takes_effect_on_a_tunnel_already_up(plab: Lab) -> None:
    set_preserve(plab, False)
    ctx = plab.ask("bo-gw", "show-vpn-context")["tunnels"][0]
    assert ctx["state"] == "UP" and ctx["preserve"] is False
    tr = start_transfer(plab)
    set_preserve(plab, True)  # while the tunnel is up and the flow is in flight
    flap(plab, "child", 1.0)
    sent, got = tr.wait(timeout=150)
    assert got["bytes"] == sent["bytes"] and got["sha256"] == sent["sha256"]
    out = plab.exec("bo-gw", ["flowpin", "show", "sysopt"], stdout=subprocess.PIPE,
                    text=True).stdout
    assert out.splitlines()[0] == "sysopt connection preserve-vpn-flows"


def test_broken_config_on_reload_changes_nothing(plab: Lab) -> None:
    cfg: Path = plab.daemon_config("bo-gw")
    good = cfg.read_text()
    before = plab.ask("bo-gw", "show-sysopt")
    try:
        cfg.write_text(good.replace("[timeouts]", "[timeouts]\nudp = \"forever\""))
        pid = plab.daemon_pid("bo-gw")
        assert pid
        os.kill(pid, signal.SIGHUP)
        line = wait_for(lambda: next((ln for ln in log_lines(plab, "bo-gw")
                                      if "752109" in ln), None), 10, "the rejection")
        assert f"{cfg}:" in line and "timeouts.udp" in line and "unchanged" in line
        assert plab.ask("bo-gw", "show-sysopt") == before
        r = plab.exec("bo-gw", ["flowpin", "reload"], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
        assert r.returncode == 1 and "timeouts.udp" in r.stderr
    finally:
        cfg.write_text(good)
    assert plab.exec("bo-gw", ["flowpin", "reload"], stdout=subprocess.DEVNULL).returncode == 0


def test_no_cleartext_on_the_wan_while_down(plab: Lab) -> None:
    from lab.capture import WanCapture

    tr = start_transfer(plab)
    with WanCapture(plab) as cap:
        flap(plab, "restart-charon", 3.0)
    sent, got = tr.wait(timeout=150)
    assert got["sha256"] == sent["sha256"]
    assert cap.summary.leaks == [], cap.summary.as_dict()
