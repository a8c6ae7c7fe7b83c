"""`python -m bench.tunnel` for real, one short round: the JSON shape, that the
two contenders differ only in flowpin's data path (the gateway's daemon passed packets for
`flowpin` and none for `none`), that the stages were placed on CPUs, and that the lab is
gone afterwards. Needs root; missing prerequisites FAIL the test. Checks behaviour, never
speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import netns
from lab.charon import CHARON_CANDIDATES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.lab  # the benchmark brings up a lab of its own: charons
def test_tunnel_bench_json_and_cleanup() -> None:
    missing = [what for ok, what in (
        (os.geteuid() == 0, "root (the lab: namespaces, charon, eBPF)"),
        (shutil.which("iperf3") is not None, "iperf3 (Debian package iperf3)"),
        (any(os.path.exists(c) for c in CHARON_CANDIDATES),
         "strongSwan's charon (Debian package strongswan-charon)"),
    ) if not ok]
    if missing:
        pytest.fail("tunnel bench prerequisites missing: " + "; ".join(missing)
                    + " -- run `make setup` as root", pytrace=False)
    p = subprocess.run([sys.executable, "-m", "bench.tunnel", "--json",
                        "--rounds", "2", "--seconds", "1", "--sliced-seconds", "4"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    tun = res["tunnel"]
    for c in ("flowpin", "none"):
        s = tun[c]["tput_mbps"]
        assert len(s["runs"]) == 2 and s["median"] > 0, (c, s)
    assert isinstance(tun["overhead_pct"], float)
    assert isinstance(tun["overhead_pct_paired"], float)
    assert isinstance(tun["met"], bool)
    sliced = tun["by_attach"][res["config"]["attach"][0]]["sliced"]  # flowpin on and off
    assert sliced["pairs"] >= 1 and isinstance(sliced["overhead_pct"], float), sliced
    assert sliced["ci95_pct"][0] <= sliced["overhead_pct"] <= sliced["ci95_pct"][1], sliced
    for gw in ("bo_gw", "ho_gw"):
        passed = res["checks"][f"{gw}_datapath_passed_packets"]
        assert passed["flowpin"] > 0 and passed["none"] == 0, (gw, passed)
    assert all(n > 0 for n in res["checks"]["datapath_packets_per_s"].values())
    placement = res["config"]["cpu_placement"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert placement["bo-client"] == placement["bo-gw"] != placement["ho-gw"], placement
        assert placement["ho-gw"] == placement["ho-server"], placement
    assert netns.listing("fplab-fpbtun-") == []


def test_pin_moves_every_thread() -> None:
    from bench.tunnel import pin

    cpu = max(os.sched_getaffinity(0))
    # a process with a second thread, like charon's pool
    p = subprocess.Popen([sys.executable, "-c", "import threading, time; "
                          "threading.Thread(target=time.sleep, args=(30,)).start(); "
                          "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{p.pid}/task")) < 2:
            assert time.monotonic() < deadline, "the child never started its thread"
            time.sleep(0.05)
        pin(p.pid, cpu)
        tids = [int(t) for t in os.listdir(f"/proc/{p.pid}/task")]
        assert len(tids) == 2
        assert all(os.sched_getaffinity(t) == {cpu} for t in tids)
    finally:
        p.kill()
        p.wait()
