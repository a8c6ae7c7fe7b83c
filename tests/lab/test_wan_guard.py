"""The WAN guard in a real lab: with nothing else between the LAN and the WAN (bo-gw's
daemon SIGKILLed, so its tunnel stays UP in the maps while charon deletes the SA), a UDP
stream at 20,000 packets/s through a CHILD_SA flap leaves bo-gw's WAN as ESP or not at all.

The witness is tcpdump on bo-gw's WAN, egress only (what bo-gw *sends*: under XFRM
decrypted packets re-enter on the WAN and are no leak). The control run removes the guard
with `tc` and must see the same stream leak: a witness that could not see it would prove
nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane.datapath import hold_pinned_tunnels
from lab import hooks, topology
from lab.capture import GatewayCapture
from lab.flap import flap
from lab.lab import Lab

pytestmark = pytest.mark.lab

RATE = 20_000  # packets/s: at this rate a 1 ms gap in the guard shows as ~20 packets
UDP_STREAM = """
import socket, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload, dst = b"u" * 72, ("10.2.0.10", 7000)
sent, t0 = 0, time.monotonic()
while (now := time.monotonic()) < t0 + seconds:
    while sent < int((now - t0) * rate):
        try:
            s.sendto(payload, dst)
        except OSError:
            pass
        sent += 1
    time.sleep(0.0005)
print(sent)
"""


def stream_through_flap(lab: Lab, pcap: Path) -> tuple[int, list[str]]:
    """Send the stream, flap the CHILD_SA on bo-gw in the middle; (sent, leaked lines)."""
    sender = lab.popen("bo-client", [sys.executable, "-c", UDP_STREAM, str(RATE), "5"],
                       stdout=subprocess.PIPE, text=True)
    with GatewayCapture(lab, "bo-gw", pcap, snaplen=96, buffer_kib=16384) as cap:
        time.sleep(1.0)
        flap(lab, "child", 2.0)
        out, _ = sender.communicate(timeout=30)
    assert cap.dropped == 0, f"the witness dropped {cap.dropped} packets"
    return int(out), cap.summary.leaks


def test_guard_holds_with_the_daemon_dead_and_the_sa_gone(plab: Lab, tmp_path: Path) -> None:
    plab.kill_daemon("bo-gw", signal.SIGKILL)  # its tunnel stays UP in the maps
    try:
        sent, leaks = stream_through_flap(plab, tmp_path / "guarded.pcap")
        assert leaks == []
        assert sent >= RATE, f"{sent} packets: below the rate where a 1 ms gap shows"
    finally:
        plab.start_daemon("bo-gw")
        plab.bring_up("bo-gw")
    ctx = plab.ask("bo-gw", "show-vpn-context")["tunnels"][0]
    assert ctx["cleartext_dropped_out"] > 0  # the guard did drop: there was a leak to stop
    assert plab.ask("bo-gw", "status")["wan_guard"] == [topology.WAN_IF]


def test_flap_with_the_daemon_alive_leaks_nothing_and_says_what_it_dropped(
        plab: Lab, tmp_path: Path) -> None:
    """charon removes the SA's routes before the daemon has read child-updown: the
    packets of that gap are the guard's; any it drops is counted and logged."""
    before = plab.ask("bo-gw", "show-vpn-context")["tunnels"][0]["cleartext_dropped_out"]
    sent, leaks = stream_through_flap(plab, tmp_path / "alive.pcap")
    assert leaks == []
    assert sent >= RATE, f"{sent} packets: below the rate where a 1 ms gap shows"
    after = plab.ask("bo-gw", "show-vpn-context")["tunnels"][0]["cleartext_dropped_out"]
    if after > before:
        deadline = time.monotonic() + 5
        while "%FLOWPIN-4-752120: Tunnel site/lan: UDP packet from 10.1.0.10 to 10.2.0.10" \
                not in plab.daemon_log("bo-gw").read_text():
            assert time.monotonic() < deadline, plab.daemon_log_tail("bo-gw")
            time.sleep(0.1)


def test_without_the_guard_the_witness_sees_the_leak(plab: Lab, tmp_path: Path) -> None:
    """Control: the same fault with the guard removed by another tool leaks in clear."""
    plab.kill_daemon("bo-gw", signal.SIGKILL)
    hooks.remove(plab.ns("bo-gw"), topology.WAN_IF, "egress")
    try:
        sent, leaks = stream_through_flap(plab, tmp_path / "unguarded.pcap")
    finally:
        plab.start_daemon("bo-gw")  # attaches the guard again
        plab.bring_up("bo-gw")
    assert sent >= RATE
    assert len(leaks) > 0
    assert all("10.1.0.10 > 10.2.0.10" in ln for ln in leaks)


def test_stopped_daemon_holds_its_tunnels_down(plab: Lab) -> None:
    """SIGTERM: the daemon sets its tunnels DOWN as it goes (nobody follows charon now);
    a starting daemon sets them DOWN before it compiles, then UP once charon is heard."""
    plab.kill_daemon("bo-gw", signal.SIGTERM)
    assert "1 tunnels held DOWN until the daemon is back" in plab.daemon_log_tail("bo-gw")
    assert hold_pinned_tunnels(plab.instance("bo-gw")) == 0  # none left UP in the maps
    plab.start_daemon("bo-gw")
    plab.wait_daemon_sees_up("bo-gw")


def test_starting_daemon_holds_pinned_tunnels_before_it_compiles(plab: Lab) -> None:
    """SIGKILL leaves the tunnel UP in the pinned maps; the next start sets it DOWN first
    (counted in its first line), before the seconds of the compile."""
    plab.kill_daemon("bo-gw", signal.SIGKILL)
    size = plab.daemon_log("bo-gw").stat().st_size
    plab.start_daemon("bo-gw")
    plab.wait_daemon_sees_up("bo-gw")
    lines = plab.daemon_log("bo-gw").read_text()[size:].splitlines()
    assert "1 tunnels of the pinned data path set DOWN until charon is heard" in lines[0]
