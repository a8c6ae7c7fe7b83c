"""Watching the data path's TC hooks: hooks that are lost are attached again.

A hook is a tcx link or a clsact filter, per the data path's attach mode (see
:mod:`controlplane.datapath`). A tcx link is lost when it is defunct (its interface was
deleted: the kernel detached it), detached by another tool, or gone from the pin directory;
a clsact filter when the qdisc or the filter is deleted.

Another tool may delete the clsact qdisc of a LAN or WAN interface (``tc qdisc del dev lan0
clsact``), or the interface may be deleted and created again (a VLAN or bridge rebuilt by
the network configuration, a veth of a container restarted). Either way flowpin's filters
are gone and, with them, every guarantee of that side: a LAN interface forwards whatever it
gets, a WAN interface no longer has its guard. :class:`HookWatch` checks every ``interval``
seconds that both filters are in place on every watched interface and attaches them again
when they are not.

Why a poll and not netlink events: the check is a link lookup and two filter dumps per
interface over one open netlink socket (measured on the 2-core build machine: 4.7 ms per
interface, mostly pyroute2 decoding, so a 0.5 s poll costs about 1 % of one core per LAN
interface), it finds a loss however it happened (clsact deleted, link re-created, a filter
replaced by another program, a netlink notification lost to ENOBUFS under load), and it
needs no second code path to get right. A loss is repaired within ``interval`` plus one
attach (a few ms): within 0.6 s at the default. Until then, the other side's programs
hold tunnel traffic back (the WAN guard while the LAN filters are missing).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from controlplane import tcx
from controlplane.datapath import (
    FILTER_HANDLE,
    FILTER_PRIO,
    HOOK_OF,
    PARENT_EGRESS,
    PARENT_INGRESS,
    PROG_INBOUND,
    PROG_OUTBOUND,
    PROG_WAN_IN,
    PROG_WAN_OUT,
    Datapath,
)

log = logging.getLogger("flowpin.hooks")
INTERVAL = 0.5
Role = str  # "lan": the flow programs; "wan": the WAN guard
EXPECTED: dict[Role, tuple[tuple[str, str], ...]] = {
    "lan": ((PARENT_INGRESS, PROG_OUTBOUND), (PARENT_EGRESS, PROG_INBOUND)),
    "wan": ((PARENT_EGRESS, PROG_WAN_OUT), (PARENT_INGRESS, PROG_WAN_IN)),
}


def hooked(lan: Iterable[str], wan: Iterable[str]) -> list[tuple[str, Role]]:
    """The interfaces that carry flowpin's hooks, with their role: the LAN interfaces (the
    flow programs), then the WAN interfaces guarded (the WAN guard)."""
    return [(i, "lan") for i in lan] + [(i, "wan") for i in wan]


def _parent(text: str) -> int:
    major, minor = text.split(":")
    return int(major, 16) << 16 | int(minor, 16)


TCA_BPF_ID = 11  # linux/pkt_cls.h: the program id in a bpf filter's options


@dataclass(frozen=True)
class Filter:
    """One of flowpin's TC filters as the kernel reports it."""

    parent: str  # PARENT_INGRESS or PARENT_EGRESS
    prog: str  # the program's name, as the loader names the filter
    prog_id: int  # the loaded program's id (0 if the kernel did not say)


def _prog_id(opts: Any) -> int:
    """TCA_BPF_ID of a bpf filter's options (pyroute2 0.9 leaves it undecoded)."""
    if opts.get_attr("TCA_BPF_ID"):
        return int(opts.get_attr("TCA_BPF_ID"))
    for name, v in opts["attrs"]:
        if name == "UNKNOWN" and v["header"]["type"] == TCA_BPF_ID:
            return int(struct.unpack_from("=I", v.data, v.offset + 4)[0])
    return 0


def flowpin_filters(ipr: Any, index: int) -> list[Filter]:
    """flowpin's filters on the interface ``index`` (ours: kind bpf, our handle and
    priority), on both clsact hooks; [] when there is no clsact."""
    out = []
    for parent in (PARENT_INGRESS, PARENT_EGRESS):
        try:
            dump = ipr.get_filters(index=index, parent=_parent(parent))
        except Exception:  # noqa: BLE001 -- no clsact: the dump fails
            continue
        for f in dump:
            if f.get_attr("TCA_KIND") != "bpf" or f["handle"] != FILTER_HANDLE:
                continue
            if f["info"] >> 16 != FILTER_PRIO:
                continue
            opts = f.get_attr("TCA_OPTIONS")
            if opts is not None:
                out.append(Filter(parent, opts.get_attr("TCA_BPF_NAME") or "", _prog_id(opts)))
    return out


# (interface, hook) -> a new fd of flowpin's tcx link there, or None (Datapath.link_fd)
LinkSource = Callable[[str, str], "int | None"]


def flowpin_links(index: int, ifname: str, links: LinkSource) -> list[Filter]:
    """flowpin's live tcx links on the interface ``index`` (named ``ifname``), as filters
    (parent, program name, id): a link that is defunct or on another interface (one that
    had this name before) is not listed."""
    out = []
    for parent, hook in HOOK_OF.items():
        fd = links(ifname, hook)
        if fd is None:
            continue
        try:
            h = tcx.read(fd)
        except OSError:
            continue
        finally:
            os.close(fd)
        if not h.link.defunct and h.link.ifindex == index:
            out.append(Filter(parent, h.prog_name, h.link.prog_id))
    return out


def missing_filters(ipr: Any, ifname: str, role: Role = "lan",
                    links: LinkSource | None = None) -> list[str]:
    """What of flowpin's hooks of ``role`` on ``ifname`` is missing: [] when both hooks
    are there, ["interface"] when the interface does not exist, else the missing hooks.
    With ``links`` (tcx mode) the hooks are flowpin's links, else its clsact filters;
    either is matched by the name of the program it runs."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return ["interface"]
    hooks = (flowpin_links(found[0], ifname, links) if links is not None
             else flowpin_filters(ipr, found[0]))
    present = {(f.parent, f.prog) for f in hooks}
    return ["ingress" if parent == PARENT_INGRESS else "egress"
            for parent, prog in EXPECTED[role] if (parent, prog) not in present]


class HookWatch:
    """Re-attaches ``dp``'s filters whenever they are lost, on the interfaces that
    ``interfaces()`` names at each pass as (name, role): "lan" for the flow programs, "wan"
    for the WAN guard (the daemon guards more WAN interfaces as tunnels come up).
    ``on_reattach(ifname, role, what_was_missing, ms)`` is called after each repair (the
    daemon logs and counts it); ``on_error(ifname, text)`` once per distinct failure."""

    def __init__(self, dp: Datapath, interfaces: Callable[[], list[tuple[str, Role]]], *,
                 netns: str | None = None, interval: float = INTERVAL,
                 on_reattach: Callable[[str, Role, list[str], float], None] | None = None,
                 on_error: Callable[[str, str], None] | None = None) -> None:
        self.dp = dp
        self.interfaces = interfaces
        self.netns = netns
        self.interval = interval
        self.on_reattach = on_reattach or (lambda *_a: None)
        self.on_error = on_error or (lambda *_a: None)
        self.reattached = 0
        self.checks = 0
        self._errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hook-watch", daemon=True)

    def start(self) -> HookWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def check(self, ipr: Any) -> None:
        """One pass over the interfaces (the thread calls it every ``interval``)."""
        self.checks += 1
        for ifname, role in self.interfaces():
            missing = missing_filters(ipr, ifname, role, self._links())
            if not missing:
                self._errors.pop(ifname, None)
                continue
            if missing == ["interface"]:
                self._error(ifname, f"interface {ifname} is gone: its filters are attached "
                                    "again as soon as it exists")
                continue
            t0 = time.monotonic()
            try:
                attach = self.dp.attach_wan if role == "wan" else self.dp.attach
                attach(ifname, netns=self.netns)
            except Exception as exc:  # noqa: BLE001 -- netlink errors; try again next pass
                self._error(ifname, f"re-attaching to {ifname} failed: {exc}")
                continue
            self._errors.pop(ifname, None)
            self.reattached += 1
            self.on_reattach(ifname, role, missing, (time.monotonic() - t0) * 1000)

    def _links(self) -> LinkSource | None:
        if self.dp.mode != "tcx":
            return None
        return lambda ifname, hook: self.dp.link_fd(ifname, self.netns, hook)

    def _error(self, ifname: str, text: str) -> None:
        if self._errors.get(ifname) != text:
            self._errors[ifname] = text
            self.on_error(ifname, text)

    def _run(self) -> None:
        from pyroute2 import IPRoute

        ipr = None
        while not self._stop.wait(self.interval):
            try:
                if ipr is None:
                    ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
                self.check(ipr)
            except Exception as exc:  # noqa: BLE001 -- never stop watching
                log.warning("hook check failed (%s); retrying", exc)
                if ipr is not None:
                    ipr.close()
                ipr = None
        if ipr is not None:
            ipr.close()
