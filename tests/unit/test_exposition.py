"""The scrape's exposition is prometheus_client's, byte for byte (controlplane/exposition.py
writes the sample lines of plain gauges and counters itself, for speed).

Each test renders one registry with the library's encoder and with ``encode``, in the text
format and in OpenMetrics, and compares the bytes: tunnels whose labels need escaping,
values the library writes in its own ways (NaN, infinities, -0.0, floats with exponents,
integers past 2**53, booleans), families the library keeps (histogram, info, a counter
with ``_created``, a sample with a timestamp), and the ``name[]`` filter."""

from __future__ import annotations

import gzip
import io
import math
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.registry import CollectorRegistry

from controlplane.exposition import encode, make_app
from controlplane.metrics import Latency, registry

FORMATS = [(generate_latest, False), (om_generate_latest, True)]
ODD_VALUES = [0, 1, True, False, -0.0, 0.0, 1.5, 1e-9, 123456789.0, 2**53 + 1, 10**22,
              float("nan"), math.inf, -math.inf, 1764000000.5]


def _snapshot(tunnels: int = 40) -> dict[str, Any]:
    lat = Latency()
    for ms in (0.3, 2.0, 40.0, 5000.0):
        lat.add(ms)
    rows = []
    for i in range(tunnels):
        value = ODD_VALUES[i % len(ODD_VALUES)]
        rows.append({"tunnel": f'site{i}/lan "a\\b"\n' if i % 3 == 0 else f"site{i}",
                     "peer": "" if i % 4 == 0 else f"peer{i}", "flows": i, "pinned": value,
                     "held_packets": value, "refused": 0, "state": "UP" if i % 2 else "DOWN",
                     "ups": i, "downs": i, "since": 1.0 + i / 7, "cleartext_dropped_out": 3,
                     "cleartext_dropped_in": value, "kicked": 7, "kicks_limited": 2,
                     "resumed_flows": 1, "resume_held_flows": 1, "flow_bytes_out": 10**12,
                     "flow_bytes_in": value})
    return {"datapath": {"PASS_FLOW": 5, "DROP_HELD": 2, "EVENT_LOST": 1},
            "flows": 3, "flow_table_size": 1024, "charon_up": True,
            "ipsec_backend": "kernel-libipsec", "daemon": {"events": 4, "a_new_count": 2},
            "event_to_map_seconds": lat.histogram(),
            "nonvpn": {"4": {"flows": 1, "limit": 8}}, "tunnels": rows}


class _Odd:
    """Families the fast path must leave to the library, beside plain ones."""

    def collect(self) -> Iterator[Metric]:
        created = CounterMetricFamily("odd_created_counter", "Has _created.", labels=["a"])
        created.add_metric(["x"], 3, created=1700000000.25)
        yield created
        stamped = GaugeMetricFamily("odd_stamped", "A timestamp.", labels=["a"])
        stamped.add_metric(["x"], 2, timestamp=1700000000.5)
        yield stamped
        unit = GaugeMetricFamily("odd_bytes", 'With a unit and a "doc"\\.', unit="bytes")
        unit.add_metric([], 5)
        yield unit
        empty = CounterMetricFamily("odd_empty", "No samples.", labels=["a"])
        yield empty


def _registry(tunnels: int = 40) -> CollectorRegistry:
    snap = _snapshot(tunnels)
    reg = registry(lambda: snap)
    reg.register(_Odd())  # type: ignore[arg-type]
    return reg


@pytest.mark.parametrize("encoder,openmetrics", FORMATS, ids=["text", "openmetrics"])
def test_the_bytes_are_the_librarys(encoder: Any, openmetrics: bool) -> None:
    reg = _registry()
    # one collect for both: the process collector's figures move between two
    metrics = list(reg.collect())
    ours = encode(metrics, encoder, openmetrics)
    assert ours == encoder(_List(metrics))
    assert b"flowpin_tunnel_up{" in ours and b"odd_created_counter" in ours


@pytest.mark.parametrize("encoder,openmetrics", FORMATS, ids=["text", "openmetrics"])
def test_a_name_filter_gives_the_librarys_bytes(encoder: Any, openmetrics: bool) -> None:
    names = ["flowpin_tunnel_flows", "flowpin_tunnel_held_packets_total", "odd_bytes"]
    metrics = list(_registry().restricted_registry(names).collect())
    ours = encode(metrics, encoder, openmetrics)
    assert ours == encoder(_List(metrics))
    assert b"flowpin_tunnel_flows{" in ours and b"flowpin_tunnel_up" not in ours


class _List:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def _call(app: Any, accept: str = "", query: str = "",
          encoding: str = "") -> tuple[list[tuple[str, str]], bytes]:
    got: dict[str, Any] = {}

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, headers

    body = b"".join(app({"PATH_INFO": "/metrics", "QUERY_STRING": query, "HTTP_ACCEPT": accept,
                         "HTTP_ACCEPT_ENCODING": encoding, "wsgi.input": io.BytesIO()}, start))
    assert got["status"] == "200 OK"
    return got["headers"], body


def test_the_app_answers_as_the_librarys_does() -> None:
    snap = _snapshot()
    app = make_app(registry(lambda: snap))
    headers, body = _call(app)
    assert headers == [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")]
    assert b"# EOF" not in body and b"flowpin_tunnel_up{" in body
    om = "application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5"
    headers, body = _call(app, accept=om)
    assert headers[0][1].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1
    headers, body = _call(app, query="name[]=flowpin_tunnel_up", encoding="gzip")
    assert ("Content-Encoding", "gzip") in headers
    text = gzip.decompress(body)
    assert b"flowpin_tunnel_up{" in text and b"flowpin_tunnel_flows" not in text
