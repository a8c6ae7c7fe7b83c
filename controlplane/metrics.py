"""Prometheus metrics, exposed with prometheus_client (Debian's python3-prometheus-client).

Nothing is counted twice: a custom collector reads the daemon's own state at scrape time
(one snapshot, taken on the daemon's loop like ``show counters``), so the numbers are those
``flowpin show …`` prints. Counters are the data path's and the daemon's cumulative counts
(``_total``; they restart at 0 with the daemon or, per tunnel, when a tunnel id is reused);
times are in seconds. docs/operations.md lists every metric.

The listener binds loopback unless ``[metrics] listen`` names another address.
"""

from __future__ import annotations

import bisect
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.process_collector import ProcessCollector

from controlplane import version
from controlplane.exposition import ColumnFamily, LabelSets, encode, make_app

# Event received from charon -> tunnel state written to the data path: ~0.1-1 ms on an idle
# gateway, tens of ms under load (docs/perf); the buckets span both, in seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0)
DEFAULT_HOST = "127.0.0.1"

# The data path's extra counters (struct counters beyond the verdict reasons).
_STATS = {
    "EVENT_LOST": ("datapath_events_lost_total", "Data-path events (demand, table full, "
                   "removed flows, WAN guard) lost because the ring buffer was full."),
    "STALE_REMOVED": ("stale_flows_removed_total", "Flows of an older tunnel generation "
                      "removed on the packet path."),
    "NONVPN_UNTRACKED": ("nonvpn_untracked_packets_total", "Packets of new non-VPN flows "
                         "passed untracked because the non-VPN budget of the table was "
                         "spent."),
    "REMOVED_LOST": ("removed_flow_records_lost_total", "Of the lost data-path events, the "
                     "records of flows removed on the packet path: teardowns never logged "
                     "(752123 tells them once per interval)."),
}
# The daemon's counts (Daemon.stats): metric name and what is counted.
_DAEMON = {
    "events": ("vici_events_total", "SA events received from charon over VICI and applied."),
    "resyncs": ("vici_resyncs_total", "Full listings of charon's conns and SAs applied "
                "(at each connection to charon)."),
    "disconnects": ("charon_disconnects_total", "Times charon's VICI socket was found "
                    "unreachable or closed (every tunnel then held DOWN)."),
    "vici_decode_errors": ("vici_decode_errors_total", "VICI messages that could not be "
                           "decoded (skipped)."),
    "initiations": ("demand_initiations_total", "CHILD_SA initiations asked of charon "
                    "because traffic waited for a tunnel that was down."),
    "initiation_failures": ("demand_initiation_failures_total", "Of those initiations, "
                            "the ones charon refused or that timed out."),
    "teardowns_logged": ("teardowns_total", "Flows removed and logged (302014/302016/302021:"
                         " idle timeout, tunnel torn down, cleared by admin)."),
    "reclassified": ("reclassified_flows_total", "Non-VPN flows cleared because a tunnel "
                     "covering them came up (reclassify-vpn)."),
    "table_full": ("table_full_events_total", "Times a new VPN flow was refused because the "
                   "flow table was full (752107, sampled by the data path)."),
    "nonvpn_budget": ("nonvpn_budget_events_total", "Times new non-VPN flows hit their "
                      "budget (752122, sampled by the data path)."),
    "reloads": ("config_reloads_total", "Configuration reloads applied (SIGHUP or flowpin "
                "reload)."),
    "reload_errors": ("config_reload_errors_total", "Configuration reloads refused (the file "
                      "had an error; the running configuration stayed)."),
    "selectors_refused": ("selectors_refused_total", "Selector pairs the data path could not "
                          "hold (752115)."),
    "tunnels_refused": ("tunnels_refused_total", "Tunnels refused for want of a free "
                        "data-path tunnel id (752117)."),
    "tunnel_ids_freed": ("tunnel_ids_freed_total", "Data-path tunnel ids freed after their "
                         "tunnel was removed and its flows gone."),
    "hooks_reattached": ("hooks_reattached_total", "Times a lost TC filter (LAN or WAN "
                         "guard) was found and re-attached (752116)."),
    "hook_errors": ("hook_errors_total", "Failed attempts to re-attach a lost TC filter."),
    "guard_out_events": ("guard_out_events_total", "WAN guard reports of tunnel packets that "
                         "would have left in clear (752120, sampled; exact packet counts in "
                         "flowpin_tunnel_cleartext_dropped_packets_total)."),
    "guard_in_events": ("guard_in_events_total", "WAN guard reports of tunnel packets that "
                        "arrived in clear (402117, sampled)."),
    "internal_errors": ("internal_errors_total", "Internal errors the daemon logged and went "
                        "on after (please report)."),
}


@dataclass
class Latency:
    """Event received -> data-path map written: the last samples in ms (``show counters``'
    percentiles) and a cumulative histogram in seconds (the metrics)."""

    samples: list[float] = field(default_factory=list)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    count: int = 0
    sum_s: float = 0.0

    def add(self, ms: float) -> None:
        self.samples.append(ms)
        del self.samples[:-10000]
        s = ms / 1000
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, s)] += 1
        self.count += 1
        self.sum_s += s

    def copy(self) -> Latency:
        return Latency(list(self.samples), list(self.buckets), self.count, self.sum_s)

    def histogram(self) -> dict[str, Any]:
        cum, out = 0, []
        for le, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.buckets, strict=True):
            cum += n
            out.append([le, cum])
        return {"buckets": out, "count": self.count, "sum": self.sum_s}



# A snapshot with every optional part present (families() leaves out what is missing).
_EVERY_FAMILY: dict[str, Any] = {"flows_counted_age_s": 0.0, "daemon": {"other": 0},
                                 "event_to_map_seconds": Latency().histogram()}


class DaemonCollector:
    """Reads a daemon snapshot (``commands.cmd_metrics``) at each scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        # The registry learns the names from here, and a scrape's ``name[]`` filter looks
        # them up (with none, every filtered scrape came back empty). Registering must not
        # take a snapshot (the daemon may not be running yet): the families of a snapshot
        # that has every optional part, with no tunnels.
        return list(families(_EVERY_FAMILY))

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


def families(snap: dict[str, Any]) -> Iterator[Metric]:
    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"flowpin_{name}", doc, labels=list(labels))

    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
        # The library adds `_total` to a counter's sample; the family is named without it.
        return CounterMetricFamily(f"flowpin_{name.removesuffix('_total')}", doc,
                                   labels=list(labels))

    info = InfoMetricFamily("flowpin_build", "flowpin's version and the Python it runs on "
                            "(always 1).")
    info.add_metric([], {"version": version(),
                         "python": ".".join(map(str, sys.version_info[:3]))})
    yield info

    up = gauge("charon_connected", "1 while charon's VICI socket answers; 0: every tunnel "
               "held DOWN.")
    up.add_metric([], int(bool(snap.get("charon_up"))))
    yield up
    backend = InfoMetricFamily("flowpin_ipsec_backend", "strongSwan's IPsec backend as "
                               "charon last said (kernel-netlink: kernel XFRM; "
                               "kernel-libipsec: userspace ESP).")
    backend.add_metric([], {"backend": str(snap.get("ipsec_backend", "unknown"))})
    yield backend

    dp = snap.get("datapath", {})
    pk = counter("packets_total", "Packets the data path judged on the LAN interfaces, by "
                 "verdict (pass/drop) and reason (docs/operations.md lists the reasons).",
                 ("verdict", "reason"))
    for name, value in sorted(dp.items()):
        verdict, _, reason = name.lower().partition("_")
        if verdict in ("pass", "drop"):
            pk.add_metric([verdict, reason], value)
    yield pk
    for key, (name, doc) in _STATS.items():
        c = counter(name, doc)
        c.add_metric([], dp.get(key, 0))
        yield c

    flows = gauge("flows", "Flows in the flow table (VPN and non-VPN, both families) as the "
                  "last sweep left it.")
    flows.add_metric([], snap.get("flows", 0))
    yield flows
    if snap.get("flows_counted_age_s") is not None:
        age = gauge("flows_counted_age_seconds", "Age of the flow counts (flowpin_flows and "
                    "the per-tunnel flow gauges): time since the sweep that counted them.")
        age.add_metric([], snap["flows_counted_age_s"])
        yield age
    cap = gauge("flow_table_capacity", "Flows the IPv4 flow table can hold "
                "(datapath.flow-table-size).")
    cap.add_metric([], snap.get("flow_table_size", 0))
    yield cap
    nonvpn = snap.get("nonvpn", {})
    nf = gauge("nonvpn_flows", "Non-VPN flows in the flow table, as the data path counts "
               "them for their budget.", ("family",))
    nl = gauge("nonvpn_flow_limit", "Budget of non-VPN flows (0: none); beyond it new "
               "non-VPN flows pass untracked.", ("family",))
    for fam, v in sorted(nonvpn.items()):
        nf.add_metric([f"ipv{fam}"], v["flows"])
        nl.add_metric([f"ipv{fam}"], v["limit"])
    yield nf
    yield nl

    # The per-tunnel families: one sample per tunnel (and direction) each, ~16,000 a
    # scrape at 1,000 tunnels. Each is a column of the tunnels' rows under label sets
    # shared by every family and rendered once a scrape (controlplane.exposition: what
    # the library would write, ~2x faster).
    rows = snap.get("tunnels", [])
    per_tunnel = [{"tunnel": str(t["tunnel"]), "peer": str(t.get("peer") or "")}
                  for t in rows]
    tunnel = LabelSets(per_tunnel)
    # out then in, tunnel by tunnel: the order the samples always had
    by_direction = LabelSets([{**lv, "direction": d} for lv in per_tunnel
                              for d in ("out", "in")])

    def column(typ: str, name: str, doc: str, values: list[Any],
               labels: LabelSets = tunnel) -> ColumnFamily:
        return ColumnFamily(f"flowpin_{name.removesuffix('_total')}", doc, typ, labels, values)

    def of(key: str) -> list[Any]:
        return [t.get(key, 0) for t in rows]

    def both(out: str, in_: str) -> list[Any]:
        return [v for t in rows for v in (t.get(out, 0), t.get(in_, 0))]

    yield column("gauge", "tunnel_up", "1 while the tunnel has a CHILD_SA installed.",
                 [int(t["state"] == "UP") for t in rows])
    yield column("gauge", "tunnel_flows", "Flows of the tunnel in the flow table (current "
                 "generation), as of the last sweep.", of("flows"))
    yield column("gauge", "tunnel_held_flows", "TCP flows held for the tunnel while it is "
                 "down (preserve-vpn-flows), as of the last sweep.", of("pinned"))
    yield column("gauge", "tunnel_flow_bytes", "Bytes carried by the tunnel's flows now in "
                 "the table, by direction (out: from the LAN), as of the last sweep; drops "
                 "as flows go.", both("flow_bytes_out", "flow_bytes_in"), by_direction)
    yield column("counter", "tunnel_held_packets_total", "Packets of held flows dropped "
                 "while their tunnel was down.", of("held_packets"))
    yield column("counter", "tunnel_refused_flows_total", "New flows of the tunnel refused "
                 "(flow table full, or tunnel down).", of("refused"))
    yield column("counter", "tunnel_cleartext_dropped_packets_total", "Packets of the "
                 "tunnel's selectors the WAN guard dropped because they crossed the WAN in "
                 "clear, by direction (out: would have left, in: arrived).",
                 both("cleartext_dropped_out", "cleartext_dropped_in"), by_direction)
    yield column("counter", "tunnel_ups_total", "Times the tunnel went UP (a CHILD_SA "
                 "installed).", of("ups"))
    yield column("counter", "tunnel_downs_total", "Times the tunnel went DOWN (its last "
                 "CHILD_SA gone).", of("downs"))
    yield column("counter", "tunnel_resume_kicks_total", "ICMP unreachables the resume kick "
                 "sent to the LAN senders of the tunnel's held TCP flows while it was down.",
                 of("kicked"))
    yield column("counter", "tunnel_resume_kicks_limited_total", "Held segments not "
                 "answered because of the kick's limits (per flow interval, global budget).",
                 of("kicks_limited"))
    yield column("counter", "tunnel_resumed_flows_total", "Held TCP flows that moved again "
                 "within 5 s of the tunnel's UP, summed over its outages (752101).",
                 of("resumed_flows"))
    yield column("counter", "tunnel_resume_held_flows_total", "Held TCP flows at those "
                 "reports: resumed/held is the share that moved again.",
                 of("resume_held_flows"))
    yield column("gauge", "tunnel_state_since_seconds", "When the tunnel last changed state "
                 "(Unix time).", [t.get("since") or None for t in rows])

    stats = dict(snap.get("daemon", {}))
    for key, (name, doc) in _DAEMON.items():
        c = counter(name, doc)
        c.add_metric([], stats.pop(key, 0))
        yield c
    if stats:  # a count added to the daemon without a metric of its own yet
        other = counter("daemon_events_total", "Other daemon counts, by kind.", ("kind",))
        for k, v in sorted(stats.items()):
            if isinstance(v, int | float):
                other.add_metric([k], v)
        yield other

    lat = snap.get("event_to_map_seconds")
    if lat is not None:
        h = HistogramMetricFamily("flowpin_event_to_map_seconds", "Time from an SA event "
                                  "received from charon (or a resync, or charon lost) to "
                                  "the tunnel's state written in the data path.")
        h.add_metric([], [(le, n) for le, n in lat["buckets"]], lat["sum"])
        yield h


def registry(snapshot: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DaemonCollector(snapshot))  # type: ignore[arg-type]
    ProcessCollector(registry=reg)  # process_cpu_seconds_total, memory, open fds
    return reg


def render(snap: dict[str, Any]) -> str:
    """The exposition text of one snapshot (what a scrape returns)."""
    return encode(registry(lambda: snap).collect(), generate_latest, False).decode()


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``port`` -> (host, port); no host means
    loopback: metrics are for the gateway's own scraper unless an admin says otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "", listen
    return host.strip("[]") or DEFAULT_HOST, int(port)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # a scrape every 15 s is not news
        pass


# A scrape's answer is served again, as it was, to scrapes asking the same within this
# many seconds. At 1,000 tunnels an answer holds ~16,000 per-tunnel samples, and
# prometheus_client alone takes 30-70 ms of CPU to format them; a second Prometheus (an HA
# pair), a federation or an admin's curl at the same moment would each pay it again and
# hold another copy (the concurrent-scrape memory figure). One second is below any scrape
# interval and below the freshness of the flow counts (a sweep every second).
SCRAPE_MAX_AGE_S = 1.0


class _SharedScrapes:
    """WSGI middleware around prometheus_client's app: one render per request kind (format,
    compression, name filter) per SCRAPE_MAX_AGE_S, shared by the scrapes that arrive
    meanwhile -- those arriving during the render wait for it rather than render too.
    The bytes are the library's, untouched."""

    def __init__(self, app: Callable[..., Any], max_age: float = SCRAPE_MAX_AGE_S) -> None:
        self.app = app
        self.max_age = max_age
        self._lock = threading.Lock()
        self._answers: dict[tuple[Any, ...], tuple[float, str, list[Any], bytes]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        key = tuple(environ.get(k) for k in ("PATH_INFO", "QUERY_STRING", "HTTP_ACCEPT",
                                             "HTTP_ACCEPT_ENCODING"))
        with self._lock:
            now = time.monotonic()
            hit = self._answers.get(key)
            if hit is None or now - hit[0] > self.max_age:
                got: list[Any] = []

                def keep(status: str, headers: list[Any], *_exc: Any) -> None:
                    got[:] = [status, headers]

                body = b"".join(self.app(environ, keep))
                if len(self._answers) >= 16:  # request kinds are few; odd ones not kept
                    self._answers.clear()
                hit = self._answers[key] = (time.monotonic(), got[0], got[1], body)
        _at, status, headers, body = hit
        start_response(status, list(headers))
        return [body]


class MetricsServer:
    def __init__(self, listen: str, snapshot: Callable[[], dict[str, Any]],
                 max_age: float = SCRAPE_MAX_AGE_S) -> None:
        self.addr = parse_listen(listen)
        self.registry = registry(snapshot)
        self.max_age = max_age
        self._srv: ThreadingWSGIServer | None = None

    def start(self) -> MetricsServer:
        host, port = self.addr
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

        class Server(ThreadingWSGIServer):
            address_family = family

        app = _SharedScrapes(make_app(self.registry), self.max_age)
        self._srv = make_server(host, port, app, Server, handler_class=_Quiet)
        threading.Thread(target=self._srv.serve_forever, name="metrics", daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._srv is not None
        return int(self._srv.server_address[1])

    def stop(self) -> None:
        if self._srv:
            self._srv.shutdown()
            self._srv.server_close()
