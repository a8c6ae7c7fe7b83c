"""`flowpin bench forward` for real, one short round: the JSON shape, that each contender
did what it says (conntrack tracked, flowpin's data path passed the flows), and that the
fpbench- namespaces are gone afterwards, also after Ctrl-C or an exception. Needs root;
missing prerequisites FAIL the test, naming what is missing. Checks behaviour, never speed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import netns

pytestmark = pytest.mark.bpf
REPO = Path(__file__).resolve().parents[2]


def _require() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, eBPF, nftables)")
    if not shutil.which("iperf3"):
        missing.append("iperf3 (Debian package iperf3)")
    for mod, what in (("bcc", "bcc for Python (python3-bpfcc, venv with "
                       "--system-site-packages)"), ("nftables", "libnftables for Python "
                       "(python3-nftables)"), ("pyroute2", "pyroute2 (pip)")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(what)
    build = f"/lib/modules/{platform.release()}/build"
    if not os.path.isdir(build):
        missing.append(f"kernel headers for bcc at {build}")
    if missing:
        pytest.fail("bench prerequisites missing: " + "; ".join(missing)
                    + " -- run `make setup` as root", pytrace=False)


def _ours() -> list[str]:
    return [n for n in netns.listing("fpbench-") if n != "fpbench-mem"]


def test_forward_json_shape_and_cleanup() -> None:
    _require()
    p = subprocess.run([sys.executable, "-m", "controlplane.cli", "bench", "forward", "--json",
                        "--rounds", "1", "--seconds", "1", "--with-tc-empty",
                        "--with-tc-floor", "--sliced-seconds", "2"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    assert set(res["forward"]) == {"plain", "nftables", "flowpin", "tc_empty", "tc_floor"}
    for c, measures in res["forward"].items():
        sliced = {m: measures.pop(f"{m}_sliced", None) for m in ("pps", "cps")}
        assert set(measures) == {"tput_gbps", "pps", "cps"}, c
        # packets/s: every contender alternated with plain within one flood; connections/s:
        # the TC ones within one client's run
        for m, s in sliced.items():
            if c == "plain" or (m == "cps" and c == "nftables"):
                assert s is None, (c, m)
                continue
            assert s["pairs"] >= 1 and s["vs_plain"] > 0, (c, m, s)
            assert s["ci95"][0] <= s["vs_plain"] <= s["ci95"][1], (c, m, s)
            assert s[f"{m}_median"] > 0 and s[f"plain_{m}_median"] > 0, (c, m, s)
            assert res["paired_ratios"][f"{c}_vs_plain_{m}_sliced"] == s["vs_plain"]
        for m, s in measures.items():
            assert set(s) == {"median", "min", "max", "runs"}, (c, m)
            assert len(s["runs"]) == 1 and s["median"] > 0, (c, m, s)
            assert s["min"] <= s["median"] <= s["max"]
    for k in ("flowpin_vs_plain_tput", "flowpin_vs_nft_tput", "flowpin_vs_plain_pps",
              "flowpin_vs_nft_pps", "flowpin_vs_nft_cps"):
        assert isinstance(res["ratios"][k], float), k
    # each contender really did its job
    assert res["checks"]["nftables_conntrack_entries"] > 0
    verdicts = res["checks"]["flowpin_verdicts"]
    assert verdicts.get("PASS_FLOW", 0) > 0 and verdicts.get("PASS_NEW", 0) > 0
    # (a drop here was a packet of an earlier contender's connection: see forward.settle)
    assert not any(k.startswith("DROP_") for k in verdicts), (
        verdicts, res["checks"]["unsettled_connections"])
    assert res["checks"]["tc_floor_flows"] > 0
    # the event ring was read as the daemon reads it (a reused port replaces a closed flow:
    # a removed-flow record each), and what that cost is reported
    assert res["checks"]["flowpin_removed_records_logged"] > 0, res["checks"]
    assert res["checks"]["flowpin_removed_record_cpu_us"] > 0, res["checks"]
    assert res["machine"]["cpus"] >= 1
    # the per-packet decomposition: what each contender adds, and the kernel's own account
    # of the time inside each program (BPF_ENABLE_STATS; off again: tests/datapath)
    pp = res["per_packet"]
    assert pp["plain_ns"] > 0
    assert set(pp["added_ns"]) == {"nftables", "flowpin", "tc_empty", "tc_floor"}
    stats = pp["prog_ns_bpf_stats"]
    assert stats["flowpin"] > 0 and stats["tc_empty"] > 0 and stats["tc_floor"] > 0
    assert stats["flowpin_own"] == round(stats["flowpin"] - stats["tc_empty"], 1)
    for c in ("tc_empty", "tc_floor"):
        assert isinstance(res["ratios"][f"{c}_vs_plain_pps"], float), c
    assert _ours() == []


def test_ctrl_c_removes_the_topology() -> None:
    _require()
    p = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "bench", "forward",
                          "--rounds", "5", "--seconds", "3"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while "fpbench-gw" not in _ours():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "topology never appeared"
            time.sleep(0.1)
        time.sleep(3)  # into the measurements
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, out + err
    assert json.loads(out) == {"error": "interrupted"}
    assert _ours() == []


def test_exception_removes_the_topology() -> None:
    _require()
    from bench.topo import Topology

    with pytest.raises(RuntimeError, match="boom"), Topology() as t:
        assert {"fpbench-client", "fpbench-gw", "fpbench-server"} <= set(_ours())
        t.popen("fpbench-server", ["sleep", "60"])
        raise RuntimeError("boom")
    assert _ours() == []


def test_a_contender_waits_for_the_last_measurements_connections() -> None:
    """A connection still open through the gateway is what a fresh contender would see
    without its SYN (flowpin: DROP_NO_CONN): settle() reports it, and is quiet once it is
    closed."""
    _require()
    from bench import topo as tp
    from bench.forward import settle

    server = ("import socket, sys; s = socket.socket(); s.bind(('0.0.0.0', 5999)); "
              "s.listen(); print('listening', flush=True); c, _ = s.accept(); "
              "sys.stdin.read(); c.close()")
    client = ("import socket, sys; s = socket.create_connection(('10.2.0.10', 5999)); "
              "print('connected', flush=True); sys.stdin.read(); s.close()")
    with tp.Topology() as t:
        srv = t.popen(tp.SERVER, [sys.executable, "-c", server], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, text=True)
        assert srv.stdout is not None and srv.stdout.readline().startswith("listening")
        cli = t.popen(tp.CLIENT, [sys.executable, "-c", client], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, text=True)
        assert cli.stdout is not None and cli.stdout.readline().startswith("connected")
        left = settle(t, timeout=0.5)
        assert f"{tp.CLIENT}: ESTABLISHED" in " ".join(left), left
        assert any(s.startswith(f"{tp.SERVER}: ESTABLISHED 5999") for s in left), left
        for p in (cli, srv):
            p.communicate("", timeout=10)
        assert settle(t, timeout=10) == []
