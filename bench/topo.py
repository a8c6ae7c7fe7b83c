"""The benchmark's own three namespaces: client -- gw -- server over veth, with pyroute2.

::

    fpbench-client          fpbench-gw                      fpbench-server
    c0 10.1.0.10/24 ── g0 10.1.0.1/24 | g1 10.2.0.1/24 ── s0 10.2.0.10/24

The gateway forwards (ip_forward=1). Every namespace starts with ``fpbench-``: leftovers
of a run that crashed are removed first, and :class:`Topology` always removes what it made
(also on an exception or Ctrl-C). Processes started in the namespaces are tracked by pid
and killed before the namespaces go.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute

from lab import netns

PREFIX = "fpbench-"
CLIENT, GW, SERVER = f"{PREFIX}client", f"{PREFIX}gw", f"{PREFIX}server"
CLIENT_IP, SERVER_IP = "10.1.0.10", "10.2.0.10"
CLIENT_NET, SERVER_NET = "10.1.0.0/24", "10.2.0.0/24"
GW_LAN_IF, GW_WAN_IF = "g0", "g1"  # g0 faces the client (flowpin's LAN side)

# (namespace a, ifname a, addr a) <-> (namespace b, ifname b, addr b)
_LINKS = (
    (CLIENT, "c0", "10.1.0.10/24", GW, GW_LAN_IF, "10.1.0.1/24"),
    (GW, GW_WAN_IF, "10.2.0.1/24", SERVER, "s0", "10.2.0.10/24"),
)
_ROUTES = {CLIENT: "10.1.0.1", SERVER: "10.2.0.1"}


LOCK = "/run/flowpin/fpbench.lock"


class BenchLock:
    """One benchmark at a time owns the ``fpbench-`` namespaces: a second one waits
    (up to ``timeout``) instead of removing the first one's namespaces as leftovers."""

    def __init__(self, timeout: float = 900.0) -> None:
        self.timeout = timeout
        self.fd = -1

    def __enter__(self) -> BenchLock:
        os.makedirs(os.path.dirname(LOCK), exist_ok=True)
        self.fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise RuntimeError(f"another flowpin benchmark holds {LOCK}") from None
                if not told:
                    print(f"waiting for another flowpin benchmark ({LOCK})", file=sys.stderr)
                    told = True
                time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def cpus() -> tuple[int | None, int | None]:
    """(load generator's CPU, server's CPU): two different CPUs when there are two, so
    that runs do not depend on where the scheduler puts the processes."""
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) < 2:
        return None, None
    return avail[0], avail[1]


def leftovers() -> list[str]:
    return netns.listing(PREFIX)


def remove_leftovers() -> list[str]:
    """Remove every ``fpbench-`` namespace (and what runs in it, all started by us)."""
    gone = []
    for ns in leftovers():
        netns.kill_all(ns)
        netns.remove(ns)
        gone.append(ns)
    return gone


class Topology:
    """``with Topology() as t:`` builds the three namespaces; leaving removes them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.lock = BenchLock()

    def __enter__(self) -> Topology:
        self.lock.__enter__()
        try:
            remove_leftovers()
            self.build()
        except BaseException:
            self.remove()
            self.lock.__exit__()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.remove()
        finally:
            self.lock.__exit__()

    def build(self) -> None:
        for ns in (CLIENT, GW, SERVER):
            netns.create(ns)
            settings = {"net.ipv6.conf.all.disable_ipv6": "1"}
            if ns == GW:
                settings["net.ipv4.ip_forward"] = "1"
            if ns == CLIENT:  # many short connections: a wide ephemeral range
                settings["net.ipv4.ip_local_port_range"] = "1024 65535"
            netns.sysctl(ns, settings)
            with IPRoute(netns=ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        tag = os.getpid() % 100000
        for i, (na, ia, aa, nb, ib, ab) in enumerate(_LINKS):
            tmp_a, tmp_b = f"fpb{tag}{i}a", f"fpb{tag}{i}b"
            with IPRoute() as ipr:
                ipr.link("add", ifname=tmp_a, kind="veth", peer=tmp_b)
                ipr.link("set", index=ipr.link_lookup(ifname=tmp_a)[0], net_ns_fd=na)
                ipr.link("set", index=ipr.link_lookup(ifname=tmp_b)[0], net_ns_fd=nb)
            for ns, tmp, ifname, cidr in ((na, tmp_a, ia, aa), (nb, tmp_b, ib, ab)):
                with IPRoute(netns=ns) as ipr:
                    idx = ipr.link_lookup(ifname=tmp)[0]
                    ipr.link("set", index=idx, ifname=ifname)
                    addr, plen = cidr.split("/")
                    ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
                    ipr.link("set", index=idx, state="up")
        for ns, gw in _ROUTES.items():
            with IPRoute(netns=ns) as ipr:
                ipr.route("add", dst="0.0.0.0/0", gateway=gw)

    def popen(self, ns: str, argv: Sequence[str], cpu: int | None = None,
              **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in namespace ``ns`` (on CPU ``cpu`` only, if given); it is
        killed when the topology goes."""
        enter = netns.preexec(ns)

        def pre() -> None:
            enter()
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        p = subprocess.Popen(list(argv), preexec_fn=pre, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[Any]) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
        if p in self.procs:
            self.procs.remove(p)

    def link_stats(self, ns: str, ifname: str) -> dict[str, int]:
        with IPRoute(netns=ns) as ipr:
            link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        st = link.get("IFLA_STATS64")
        return {k: int(st[k]) for k in ("rx_packets", "tx_packets", "rx_dropped",
                                         "tx_dropped", "rx_bytes", "tx_bytes")}

    def remove(self) -> None:
        for p in list(self.procs):
            self.stop(p)
        remove_leftovers()
