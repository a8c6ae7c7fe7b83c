"""The metrics exposition, read back with prometheus_client's own parser.

The lab test (tests/lab/test_cli.py) scrapes a real daemon; these check the collector on a
snapshot of the shape ``commands.cmd_metrics`` returns, and the listener over HTTP."""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controlplane.metrics import LATENCY_BUCKETS, Latency, MetricsServer, render


def snapshot() -> dict[str, Any]:
    lat = Latency()
    for ms in (0.3, 2.0, 40.0, 5000.0):
        lat.add(ms)
    return {"datapath": {"PASS_FLOW": 5, "DROP_HELD": 2, "EVENT_LOST": 1,
                         "NONVPN_UNTRACKED": 8},
            "flows": 3, "flow_table_size": 1024, "charon_up": True,
            "ipsec_backend": "kernel-libipsec",
            "daemon": {"events": 4, "reloads": 1, "a_new_count": 2},
            "event_to_map_seconds": lat.histogram(),
            "nonvpn": {"4": {"flows": 1, "limit": 8}, "6": {"flows": 0, "limit": 2}},
            "tunnels": [{"tunnel": 'site/lan "a\\b"\n', "peer": "ho-gw", "flows": 3,
                         "pinned": 1, "held_packets": 2, "refused": 0, "state": "DOWN",
                         "ups": 1, "downs": 1, "since": 1.0, "cleartext_dropped_out": 3,
                         "cleartext_dropped_in": 0, "kicked": 7, "kicks_limited": 2,
                         "resumed_flows": 1, "resume_held_flows": 1}]}


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}


def test_names_types_and_labels() -> None:
    fams = families(render(snapshot()))
    kinds = {name: f.type for name, f in fams.items() if name.startswith("flowpin_")}
    # Counters are named without _total in the family and carry it on the sample.
    assert kinds["flowpin_packets"] == "counter"
    assert samples(fams["flowpin_packets"]) == {
        ("flowpin_packets_total", (("reason", "flow"), ("verdict", "pass"))): 5,
        ("flowpin_packets_total", (("reason", "held"), ("verdict", "drop"))): 2}
    assert kinds["flowpin_nonvpn_untracked_packets"] == "counter"
    assert kinds["flowpin_datapath_events_lost"] == "counter"
    assert kinds["flowpin_vici_events"] == "counter"
    assert kinds["flowpin_config_reloads"] == "counter"
    assert kinds["flowpin_tunnel_held_packets"] == "counter"
    assert kinds["flowpin_tunnel_cleartext_dropped_packets"] == "counter"
    lv = (("peer", "ho-gw"), ("tunnel", 'site/lan "a\\b"\n'))
    assert samples(fams["flowpin_tunnel_resume_kicks"]) == {
        ("flowpin_tunnel_resume_kicks_total", lv): 7}
    assert samples(fams["flowpin_tunnel_resume_kicks_limited"]) == {
        ("flowpin_tunnel_resume_kicks_limited_total", lv): 2}
    assert samples(fams["flowpin_tunnel_resumed_flows"]) == {
        ("flowpin_tunnel_resumed_flows_total", lv): 1}
    assert samples(fams["flowpin_tunnel_resume_held_flows"]) == {
        ("flowpin_tunnel_resume_held_flows_total", lv): 1}
    assert kinds["flowpin_flows"] == "gauge" and kinds["flowpin_tunnel_up"] == "gauge"
    # Info metrics: a gauge of value 1 in the text format.
    assert kinds["flowpin_build_info"] == "gauge"
    assert kinds["flowpin_ipsec_backend_info"] == "gauge"
    assert kinds["flowpin_event_to_map_seconds"] == "histogram"
    # Every counter sample ends in _total; no metric is in milliseconds.
    for f in fams.values():
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        assert "_ms" not in f.name
        assert f.documentation, f.name
    # A daemon count without a metric of its own is still exposed, by kind.
    assert samples(fams["flowpin_daemon_events"]) == {
        ("flowpin_daemon_events_total", (("kind", "a_new_count"),)): 2}
    nv = samples(fams["flowpin_nonvpn_flow_limit"])
    assert nv[("flowpin_nonvpn_flow_limit", (("family", "ipv6"),))] == 2
    (build,) = fams["flowpin_build_info"].samples
    assert build.name == "flowpin_build_info" and build.value == 1
    assert set(build.labels) == {"version", "python"} and build.labels["version"]


def test_label_values_are_escaped() -> None:
    """A conn name with a quote, a backslash and a newline survives the round trip."""
    text = render(snapshot())
    assert 'tunnel="site/lan \\"a\\\\b\\"\\n"' in text
    (s,) = families(text)["flowpin_tunnel_up"].samples
    assert s.labels == {"tunnel": 'site/lan "a\\b"\n', "peer": "ho-gw"} and s.value == 0


def test_event_to_map_histogram_in_seconds() -> None:
    h = samples(families(render(snapshot()))["flowpin_event_to_map_seconds"])
    buckets = {dict(lbl)["le"]: v for (name, lbl), v in h.items() if name.endswith("_bucket")}
    # 0.3 ms, 2 ms, 40 ms and 5 s: cumulative counts at the bucket bounds (seconds).
    assert buckets["0.0005"] == 1 and buckets["0.0025"] == 2 and buckets["0.05"] == 3
    assert buckets[str(LATENCY_BUCKETS[-1])] == 3 and buckets["+Inf"] == 4
    assert h[("flowpin_event_to_map_seconds_count", ())] == 4
    assert abs(h[("flowpin_event_to_map_seconds_sum", ())] - 5.0423) < 1e-9


def test_latency_keeps_counting_past_the_sample_window() -> None:
    lat = Latency()
    for _ in range(10050):
        lat.add(1.0)
    assert len(lat.samples) == 10000 and lat.histogram()["count"] == 10050
    copy = lat.copy()
    lat.add(1.0)
    assert copy.count == 10050  # a snapshot does not move with the daemon


def test_listener_binds_loopback_and_serves_the_snapshot() -> None:
    srv = MetricsServer(":0", snapshot).start()
    try:
        assert srv._srv is not None and srv._srv.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            fams = families(r.read().decode())
        assert "flowpin_tunnel_up" in fams and "process_cpu_seconds" in fams
    finally:
        srv.stop()


def _scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def test_scrapes_within_the_max_age_share_one_snapshot_and_later_ones_take_a_new() -> None:
    taken = []

    def counting() -> dict[str, Any]:
        taken.append(1)
        snap = snapshot()
        snap["flows"] = len(taken)  # which snapshot an answer came from
        return snap

    srv = MetricsServer(":0", counting, max_age=0.5).start()
    try:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(_scrape(srv.port)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(taken) == 1 and len(answers) == 4 and len(set(answers)) == 1
        _ctype, again = _scrape(srv.port)
        assert len(taken) == 1 and again == answers[0][1]
        time.sleep(0.6)
        _ctype, later = _scrape(srv.port)
        assert len(taken) == 2
        assert samples(families(later)["flowpin_flows"]) == {("flowpin_flows", ()): 2.0}
    finally:
        srv.stop()


def test_each_format_is_answered_in_its_own_kind() -> None:
    srv = MetricsServer(":0", snapshot).start()
    try:
        om = "application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5"
        ctype, text = _scrape(srv.port, om)
        assert ctype.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
        ctype, text = _scrape(srv.port)
        assert ctype.startswith("text/plain; version=0.0.4") and "# EOF" not in text
    finally:
        srv.stop()
