"""The CLI and the metrics, against a real daemon in the lab (`flowpin lab exec GW --`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from lab import attach, hooks
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
    """curl of the real daemon's endpoint, read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    # Traffic through the tunnel first, so that the data path has judged some packets.
    assert lab.exec("bo-client", [sys.executable, "-c", UDP]).returncode == 0
    r = lab.exec("bo-gw", ["curl", "-sf", "http://127.0.0.1:9477/metrics"],
                 stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0
    fams = {f.name: f for f in text_string_to_metric_families(r.stdout)}

    def value(name: str, **labels: str) -> float:
        (v,) = [s.value for f in fams.values() for s in f.samples
                if s.name == name and s.labels == labels]
        return v

    (build,) = fams["flowpin_build_info"].samples
    assert build.labels["version"] and build.value == 1
    assert value("flowpin_charon_connected") == 1
    backend = lab.meta()["backend"]
    assert value("flowpin_ipsec_backend_info", backend=backend) == 1
    assert value("flowpin_tunnel_up", tunnel="site/lan", peer="ho-gw") == 1
    assert fams["flowpin_packets"].type == "counter"
    assert value("flowpin_packets_total", verdict="pass", reason="new") >= 1
    assert value("flowpin_tunnel_ups_total", tunnel="site/lan", peer="ho-gw") >= 1
    assert value("flowpin_vici_resyncs_total") >= 1
    # The tunnel's UP was written to the data path: one event-to-map time at least, in s.
    assert fams["flowpin_event_to_map_seconds"].type == "histogram"
    count = value("flowpin_event_to_map_seconds_count")
    assert count >= 1 and value("flowpin_event_to_map_seconds_bucket", le="+Inf") == count
    assert 0 < value("flowpin_event_to_map_seconds_sum") < count  # seconds, not ms
    for f in fams.values():
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
    # The lab's daemon listens on its namespace's loopback only.
    ss = lab.exec("bo-gw", ["ss", "-Hltn", "sport = :9477"], stdout=subprocess.PIPE,
                  text=True).stdout.split()
    assert "127.0.0.1:9477" in ss, ss


def test_status_at_a_glance(lab: Lab) -> None:
    st = as_json(lab, "status")
    assert st["charon_up"] and st["ipsec_backend"] == lab.meta()["backend"]
    assert st["tunnels"] == {"up": 1, "total": 1}
    assert {(h["interface"], h["role"], h["attached"]) for h in st["hooks"]} >= {
        ("lan0", "lan", True), ("wan0", "wan", True)}
    text = fp(lab, "status").stdout
    assert "tunnels:  1 of 1 up" in text and "lan0 (lan) attached" in text
    # the attach mode the probe chose, and why (the suite's: FLOWPIN_TEST_ATTACH)
    assert st["attach"]["mode"] == attach.resolved()
    assert f"attach:   {attach.resolved()} (" in text
    # the hooks are asked of the kernel at each status: a lost filter shows at once
    hooks.remove(lab.ns("bo-gw"), "lan0", "ingress")
    st = as_json(lab, "status")
    lan = next(h for h in st["hooks"] if h["interface"] == "lan0")
    # the hooks watch may already have put it back (it looks twice a second)
    assert lan["attached"] or lan["missing"] == ["ingress"]
    # leave the lab as found: the next tests' flows need the filter back
    deadline = time.monotonic() + 10
    while not all(h["attached"] for h in as_json(lab, "status")["hooks"]):
        assert time.monotonic() < deadline, "the hooks watch did not put the filter back"
        time.sleep(0.2)
    # the repair was logged as a warning: status shows it as the last problem
    last = as_json(lab, "status")["last_problem"]
    assert last and "752116" in last["line"] and "lan0" in last["line"], last
    assert "last problem: " in fp(lab, "status").stdout


def test_conn_filters_as_the_asa_spells_them(lab: Lab) -> None:
    """`show conn` and `clear conn` take the same filters, as options or ASA keywords; the
    counts of status, show conn and show counters come from one reading of the table."""
    script = ("import socket\n"
              "for port in (44000, 44001):\n"
              "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "    s.bind(('10.1.0.10', port)); s.sendto(b'x', ('10.2.0.10', 44009))\n")
    assert lab.exec("bo-client", [sys.executable, "-c", script]).returncode == 0
    time.sleep(0.3)
    shown = as_json(lab, "show", "conn", "address", "10.2.0.10", "port", "44000",
                    "protocol", "udp")
    assert [c["inside"]["port"] for c in shown["connections"]] == [44000]
    both = as_json(lab, "show", "conn", "--port", "44009")
    assert sorted(c["inside"]["port"] for c in both["connections"]) == [44000, 44001]
    counts = {as_json(lab, "status")["flows"], as_json(lab, "show", "counters")["flows"],
              both["in_use"]}
    assert len(counts) == 1 or max(counts) - min(counts) <= 2  # other lab traffic may come
    r = fp(lab, "show", "conn", "address", "10.2.0.300")
    assert r.returncode == 1 and "is not an IPv4 or IPv6 address" in r.stderr
    r = fp(lab, "clear", "conn", "port", "44001", "protocol", "udp")
    assert r.returncode == 0 and r.stdout.strip() == "1 connections cleared"
    left = as_json(lab, "show", "conn", "port", "44009")["connections"]
    assert [c["inside"]["port"] for c in left] == [44000]
