"""A real TCP stream through a gateway namespace with the data path on its LAN veth.

client ns (10.1.0.5) -- c0/g0 -- gw ns (forwarding; data path on g0) -- g1/s0 -- server ns
(10.2.0.9). A selector 10.1.0.0/16 <-> 10.2.0.0/16 maps the stream to tunnel 1, whose state
the test flips. The loader is a separate process, SIGKILLed and restarted mid-hold.
Namespaces are named fptest-dp-*, leftovers are removed first, and they are always removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from controlplane.datapath import Datapath, DatapathConfig, detach_interface, purge_pins
from lab import attach, hooks
from tests.datapath.loader_proc import VETH_CONFIG

pytestmark = pytest.mark.bpf

PREFIX = "fptest-dp-"
REPO = Path(__file__).resolve().parents[2]
TUN = 1


def _cleanup_leftovers() -> None:
    """Remove what an earlier, killed run left: names carry the pid of the run that made
    them, and only those of dead processes go (other runs may be going on beside this one,
    from another checkout)."""
    for name in netns.listnetns():
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) + 1:]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            netns.remove(name)


def _in_ns(name: str, fn: Any, *args: Any) -> Any:
    """Run fn in namespace ``name`` in this thread (sockets keep the namespace they
    were created in)."""
    netns.pushns(name)
    try:
        return fn(*args)
    finally:
        netns.popns()


def _sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


@pytest.fixture
def topo() -> Iterator[dict[str, str]]:
    _cleanup_leftovers()
    tag = str(os.getpid())
    ns = {"c": f"{PREFIX}c{tag}", "g": f"{PREFIX}g{tag}", "s": f"{PREFIX}s{tag}"}
    instance = f"{PREFIX}veth{tag}"
    try:
        for n in ns.values():
            netns.create(n)
        with IPRoute() as ipr:
            ipr.link("add", ifname=f"fpc{tag}", kind="veth", peer={"ifname": f"fpg{tag}"})
            ipr.link("add", ifname=f"fps{tag}", kind="veth", peer={"ifname": f"fph{tag}"})
            for ifn, target, new in ((f"fpc{tag}", ns["c"], "c0"), (f"fpg{tag}", ns["g"], "g0"),
                                     (f"fph{tag}", ns["g"], "g1"), (f"fps{tag}", ns["s"], "s0")):
                idx = ipr.link_lookup(ifname=ifn)[0]
                ipr.link("set", index=idx, net_ns_fd=target)
                with IPRoute(netns=target) as nipr:
                    i = nipr.link_lookup(ifname=ifn)[0]
                    nipr.link("set", index=i, ifname=new)
        plan = {ns["c"]: [("c0", "10.1.0.5", 24, "10.1.0.1")],
                ns["g"]: [("g0", "10.1.0.1", 24, None), ("g1", "10.2.0.1", 24, None)],
                ns["s"]: [("s0", "10.2.0.9", 24, "10.2.0.1")]}
        for name, ifs in plan.items():
            with IPRoute(netns=name) as ipr:
                for ifn, addr, plen, gw in ifs:
                    i = ipr.link_lookup(ifname=ifn)[0]
                    ipr.addr("add", index=i, address=addr, prefixlen=plen)
                    ipr.link("set", index=i, state="up")
                    if gw:
                        ipr.route("add", dst="0.0.0.0/0", gateway=gw)
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
        _in_ns(ns["g"], _sysctl, "net/ipv4/ip_forward", "1")
        # IPv4 only: without IPv6 the gateway sends nothing of its own on g1 but ARP (its
        # router solicitations and MLD reports, seconds after link-up, would land in the
        # witnesses' counts of what leaves toward the server)
        _in_ns(ns["g"], _sysctl, "net/ipv6/conf/all/disable_ipv6", "1")
        yield {**ns, "instance": instance}
    finally:
        with contextlib.suppress(Exception):  # namespace may be gone already
            detach_interface("g0", ns["g"])
        purge_pins(instance)
        for n in ns.values():
            if n in netns.listnetns():
                netns.remove(n)


class Loader:
    """The loader as a separate process."""

    def __init__(self, instance: str, ns: str) -> None:
        self.args = [sys.executable, "-m", "tests.datapath.loader_proc", instance, ns, "g0"]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> bool:
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "READY", f"loader did not start: {line}"
        return line[1] == "1"

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _recv_exact(s: socket.socket, n: int, timeout: float) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _tx_packets(ns: str, ifname: str) -> int:
    with IPRoute(netns=ns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return link.get_attr("IFLA_STATS64")["tx_packets"]


def _tc_filters(ns: str, dev: str) -> str:
    out = ""
    for hook in ("ingress", "egress"):
        out += subprocess.run(["tc", "-n", ns, "filter", "show", "dev", dev, hook],
                              capture_output=True, text=True, check=True).stdout
    return out.strip()


def test_attach_puts_one_filter_on_each_hook_and_detach_removes_them(
        topo: dict[str, str]) -> None:
    dp = Datapath(DatapathConfig(instance=topo["instance"], attach=attach.mode(),
                                **VETH_CONFIG)).load()  # type: ignore[arg-type]
    try:
        dp.attach("g0", netns=topo["g"])
        dp.attach("g0", netns=topo["g"])  # idempotent: replaced, not duplicated
        assert hooks.hook_progs(topo["g"], "g0") == {"ingress": ["fp_outbound"],
                                                     "egress": ["fp_inbound"]}
        if dp.mode == "clsact":
            shown = _tc_filters(topo["g"], "g0")
            lines = [ln for ln in shown.splitlines() if "handle" in ln]
            assert len(lines) == 2, shown
            assert "fp_outbound" in lines[0] and "fp_inbound" in lines[1], shown
            assert "direct-action" in shown
        dp.detach()
        assert hooks.hook_progs(topo["g"], "g0") == {"ingress": [], "egress": []}
        assert _tc_filters(topo["g"], "g0") == ""
        dp.detach("g0", topo["g"])  # nothing to remove: not an error
        with pytest.raises(Exception, match="not found"):
            dp.attach("nosuchif", netns=topo["g"])
    finally:
        dp.close()


def test_stream_is_held_while_down_survives_a_loader_kill_and_resumes(
        topo: dict[str, str]) -> None:
    loader = Loader(topo["instance"], topo["g"])
    ctl: Datapath | None = None
    try:
        assert loader.start() is False  # fresh pins
        # the control plane's own handle on the same pinned maps
        ctl = Datapath(DatapathConfig(instance=topo["instance"], attach=attach.mode(),
                                **VETH_CONFIG)).load()  # type: ignore[arg-type]
        assert ctl.reused_pins
        t = ctl.table
        t.add_selector(TUN, "10.1.0.0/16", "10.2.0.0/16")
        t.set_tunnel(TUN, up=True, preserve=True)

        srv = _in_ns(topo["s"], socket.create_server, ("10.2.0.9", 5001))
        cli = _in_ns(topo["c"], socket.create_connection, ("10.2.0.9", 5001), 10)
        conn, _ = srv.accept()
        data_a = os.urandom(64 * 1024)
        cli.sendall(data_a)
        assert _recv_exact(conn, len(data_a), 10) == data_a
        [flow] = [f for f in t.flows(4) if f.key.proto == 6]
        assert flow.tunnel_id == TUN and flow.tcp_state == "ESTABLISHED"

        # tunnel down: the stream is held, nothing reaches the server side
        t.set_state(TUN, up=False)
        tx_before = _tx_packets(topo["g"], "g1")
        data_b = os.urandom(32 * 1024)
        cli.sendall(data_b)
        time.sleep(1.5)
        conn.setblocking(False)
        with pytest.raises(BlockingIOError):
            conn.recv(1)
        conn.setblocking(True)
        held = t.tunnel(TUN).held
        assert held > 0 and t.counters()["DROP_HELD"] >= held

        # the loader dies; the filters keep holding on the pinned maps; a new one reattaches
        loader.kill()
        time.sleep(0.5)
        assert loader.start() is True
        assert t.get_flow(flow.key) is not None, "held flow lost across the loader restart"
        time.sleep(0.5)
        assert _tx_packets(topo["g"], "g1") - tx_before <= 2  # at most ARP, no TCP
        conn.setblocking(False)
        with pytest.raises(BlockingIOError):
            conn.recv(1)
        conn.setblocking(True)

        # tunnel up: the retransmissions go through, every byte intact
        t.set_state(TUN, up=True)
        got = _recv_exact(conn, len(data_b), 30)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data_b).digest()
        reply = os.urandom(16 * 1024)
        conn.sendall(reply)
        assert _recv_exact(cli, len(reply), 10) == reply
        after = t.get_flow(flow.key)
        assert after is not None and after.tcp_state == "ESTABLISHED"
        assert sum(after.bytes) > len(data_a) + len(data_b) + len(reply)
        for s in (cli, conn, srv):
            s.close()

        # a clean stop removes both filters (tc as an independent witness); pins stay
        loader.stop()
        assert _tc_filters(topo["g"], "g0") == ""
        assert (Path("/sys/fs/bpf/flowpin") / topo["instance"] / "fp_flows4").exists()
    finally:
        loader.stop()
        if ctl is not None:
            ctl.close()
