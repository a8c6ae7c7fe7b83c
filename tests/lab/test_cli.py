"""The CLI and the metrics, against a real daemon in the lab (`flowpin lab exec GW --`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from lab.lab import Lab

pytestmark = pytest.mark.lab

UDP = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
       "s.bind(('10.1.0.10', 43000)); s.sendto(b'x', ('10.2.0.10', 43001))")


def fp(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    return lab.exec("bo-gw", ["flowpin", *args], stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)


def as_json(lab: Lab, *args: str) -> Any:
    r = fp(lab, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_show_commands_as_json(lab: Lab) -> None:
    ctx = as_json(lab, "show", "vpn-context")
    (t,) = ctx["tunnels"]
    assert (t["tunnel"], t["state"], t["peer"]) == ("site/lan", "UP", "ho-gw")
    assert t["spi_in"] and t["spi_out"]
    sysopt = as_json(lab, "show", "sysopt")
    assert sysopt["preserve_vpn_flows"] is False and sysopt["reclassify_vpn"] is True
    assert sysopt["timeouts"]["conn"] == "1:00:00"
    counters = as_json(lab, "show", "counters")
    assert "PASS_FLOW" in counters["datapath"] and counters["flow_table_size"] == 65536


def test_the_ipsec_backend_is_said(lab: Lab) -> None:
    """The daemon learns charon's backend over VICI: it is the one the lab probed."""
    backend = lab.meta()["backend"]
    assert as_json(lab, "show", "vpn-context")["ipsec_backend"] == backend
    r = fp(lab, "show", "vpn-context", "--detail")
    assert f"charon connected, IPsec backend {backend}" in r.stdout, r.stdout
    assert lab.ask("bo-gw", "status")["ipsec_backend"] == backend
    assert f"(IPsec backend {backend})" in lab.daemon_log("bo-gw").read_text()


def test_show_conn_and_clear_conn(lab: Lab) -> None:
    assert lab.exec("bo-client", [sys.executable, "-c", UDP]).returncode == 0
    time.sleep(0.3)
    conns = as_json(lab, "show", "conn", "--tunnel", "site/lan")["connections"]
    udp = [c for c in conns if c["protocol"] == "UDP" and c["inside"]["port"] == 43000]
    assert udp and udp[0]["outside"] == {"address": "10.2.0.10", "port": 43001}
    assert udp[0]["tunnel"] == "site/lan" and udp[0]["initiator"] == "inside"
    text = fp(lab, "show", "conn").stdout
    assert "UDP site/lan 10.2.0.10:43001 inside 10.1.0.10:43000" in text

    r = fp(lab, "clear", "conn", "--protocol", "udp", "--port", "43000")
    assert r.returncode == 0 and r.stdout.strip() == "1 connections cleared"
    conns = as_json(lab, "show", "conn")["connections"]
    assert not [c for c in conns if c["inside"]["port"] == 43000]
    log = lab.daemon_log("bo-gw").read_text()
    assert "10.1.0.10/43000 duration" in log and "Flow cleared by admin" in log


def test_errors_are_one_line(lab: Lab) -> None:
    r = fp(lab, "show", "conn", "--tunnel", "nosuch")
    assert r.returncode == 1 and "no tunnel 'nosuch'" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "controlplane.cli", "show", "conn", "--socket",
                        "/nonexistent/flowpin.sock"], capture_output=True, text=True)
    assert r.returncode == 1 and "no flowpin daemon at /nonexistent/flowpin.sock" in r.stderr


def test_prometheus_metrics(lab: Lab) -> None:
    r = lab.exec("bo-gw", ["curl", "-sf", "http://127.0.0.1:9477/metrics"],
                 stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "# TYPE flowpin_packets_total counter" in lines
    assert 'flowpin_tunnel_up{tunnel="site/lan"} 1' in lines
    assert "flowpin_charon_up 1" in lines
    assert any(ln.startswith('flowpin_packets_total{reason="pass_flow"} ') for ln in lines)
