"""Prometheus metrics (text exposition format) on a local port, when configured.

Served from a thread; the numbers are read on the daemon's main loop (one snapshot per
scrape), so a scrape never races a map write.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any


def render(snap: dict[str, Any]) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP flowpin_{name} {help_}")
        out.append(f"# TYPE flowpin_{name} {kind}")
        for labels, value in samples:
            out.append(f"flowpin_{name}{labels} {value}")

    dp = snap["datapath"]
    metric("packets_total", "counter", "Packets by data-path verdict reason.",
           [(f'{{reason="{k.lower()}"}}', v) for k, v in sorted(dp.items())])
    metric("flows", "gauge", "Flows in the flow table.", [("", snap["flows"])])
    metric("flow_table_size", "gauge", "Capacity of the flow table.",
           [("", snap["flow_table_size"])])
    nonvpn = snap.get("nonvpn", {})
    metric("nonvpn_flows", "gauge", "Non-VPN flows tracked, as the data path counts them "
           "for its budget.", [(f'{{family="{f}"}}', v["flows"]) for f, v in nonvpn.items()])
    metric("nonvpn_flow_limit", "gauge", "Budget of non-VPN flows (0: none); beyond it "
           "new non-VPN flows pass untracked.",
           [(f'{{family="{f}"}}', v["limit"]) for f, v in nonvpn.items()])
    metric("charon_up", "gauge", "1 while charon's VICI socket answers.",
           [("", int(snap["charon_up"]))])
    for key, help_ in (("flows", "Active flows of the tunnel."),
                       ("pinned", "TCP flows pinned while the tunnel is down."),
                       ("held_packets", "Packets held (dropped) for pinned flows."),
                       ("refused", "New flows refused (table full)."),
                       ("cleartext_dropped_out", "Packets of the tunnel the WAN guard dropped: "
                        "they would have left the WAN in clear."),
                       ("cleartext_dropped_in", "Packets of the tunnel the WAN guard dropped: "
                        "they arrived on the WAN in clear.")):
        metric(f"tunnel_{key}", "gauge", help_,
               [(f'{{tunnel="{t["tunnel"]}",peer="{t["peer"]}"}}', t[key])
                for t in snap["tunnels"]])
    metric("tunnel_up", "gauge", "1 while the tunnel has a CHILD_SA installed.",
           [(f'{{tunnel="{t["tunnel"]}"}}', int(t["state"] == "UP")) for t in snap["tunnels"]])
    metric("daemon_events_total", "counter", "Daemon activity by kind.",
           [(f'{{kind="{k}"}}', v) for k, v in sorted(snap["daemon"].items())])
    lat = snap["event_to_map_ms"]
    if lat["count"]:
        metric("event_to_map_ms", "gauge", "VICI event received to map written (ms).",
               [('{quantile="0.5"}', lat["p50"]), ('{quantile="0.99"}', lat["p99"])])
    return "\n".join(out) + "\n"


class MetricsServer:
    def __init__(self, listen: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        host, _, port = listen.rpartition(":")
        self.addr = (host.strip("[]") or "127.0.0.1", int(port))
        self.snapshot = snapshot
        self._srv: http.server.ThreadingHTTPServer | None = None

    def start(self) -> MetricsServer:
        snapshot = self.snapshot

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- http.server's name
                if self.path not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                try:
                    body = render(snapshot()).encode()
                except Exception as exc:  # noqa: BLE001
                    self.send_error(503, str(exc))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._srv = http.server.ThreadingHTTPServer(self.addr, Handler)
        threading.Thread(target=self._srv.serve_forever, name="metrics", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._srv:
            self._srv.shutdown()
            self._srv.server_close()
