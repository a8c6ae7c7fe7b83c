"""Loader of the flowpin data path: compile with bcc, attach (tcx links or clsact filters),
reattach, detach.

The C lives in the ``flowpin_bpf`` package (the ``bpf/`` folder). bcc only rewrites map
calls (``fp_flows4.lookup(...)``) in the file it is given, not in headers it includes, so the
loader expands the project's own ``#include "lib/..."`` lines into one text first; system
headers are left to clang.

Maps are pinned in bpffs under ``/sys/fs/bpf/flowpin/<instance>/``. A loader that starts
while pins exist reuses them (bcc ``BPF_TABLE_PINNED``), so a restart keeps every flow; the
hooks are *replaced* in place, so there is no window in which packets pass unfiltered.
Hooks left behind by a killed loader keep working on the pinned maps until then.

Two attach modes, chosen by a probe (``DatapathConfig.attach``: auto, tcx, clsact): tcx
links (Linux 6.6+, see :mod:`controlplane.tcx`), pinned beside the maps and updated in place
with BPF_F_REPLACE; or a clsact qdisc with cls_bpf filters (pyroute2) where the kernel has no
tcx, replaced in place at the same parent, priority and handle. Switching modes attaches the
new hooks first and removes the old ones after, so the interface is never without one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from controlplane import libbpf, tcx
from controlplane.flow_table import FlowTable
from controlplane.flow_types import STAT_MAX, TUNNEL_DOWN, TUNNEL_WORD
from controlplane.libbpf import prog_test_run

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "flowpin"
ENTRY = "flowpin.c"
PROG_OUTBOUND = "fp_outbound"  # clsact ingress: LAN -> tunnel
PROG_INBOUND = "fp_inbound"  # clsact egress: tunnel -> LAN
PROG_WAN_OUT = "fp_wan_out"  # WAN clsact egress: the guard on what the gateway sends
PROG_WAN_IN = "fp_wan_in"  # WAN clsact ingress: the guard on what it receives
PROG_CLOCK = "fp_clock_probe"  # test-run only: samples (jiffies, CLOCK_MONOTONIC)
HZ_CANDIDATES = (100, 250, 300, 1000)
PARENT_INGRESS = "ffff:fff2"
PARENT_EGRESS = "ffff:fff3"
HOOK_OF = {PARENT_INGRESS: "ingress", PARENT_EGRESS: "egress"}  # clsact parent -> tcx hook
FILTER_PRIO = 1
ARPHRD_ETHER = 1  # if_arp.h: Ethernet link headers (veth, VLAN, bridge, bond, NICs)
FILTER_HANDLE = 1
# The maps pinned under pin_dir, by their names in bpf/lib/maps.h (also their pin names).
MAP_NAMES = ("fp_flows4", "fp_flows6", "fp_selectors4", "fp_selectors6", "fp_tunnels",
             "fp_tunnel_stats", "fp_guard_stats", "fp_counters", "fp_config", "fp_nonvpn",
             "fp_kick_config", "fp_kick_budget", "fp_kick_stats", "fp_kick_last4",
             "fp_kick_last6")
# The pinned maps' layout: the C that says what they hold -- their structs and enums
# (flow_types.h) and their names, types and sizes (maps.h). Any change to it other than in
# comments or spacing is another layout, whose maps this build must not read or write.
LAYOUT_SOURCES = ("lib/flow_types.h", "lib/maps.h")
# The layout id's own pin, beside the maps (fp_ as every pin). Its name never changes (the
# maps' may), so that every flowpin, older or newer, finds it there.
LAYOUT_PIN = "fp_layout"
_C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
# A directory name under PIN_ROOT: never "." or ".." (the pin directory would be bpffs
# itself or every instance's parent, and a purge would empty it).
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DatapathError(RuntimeError):
    """Loading, attaching or detaching the data path failed; the message says why."""


class LayoutMismatch(DatapathError):
    """The pinned maps are of another layout than this build's (:func:`check_layout`)."""


@dataclass
class DatapathConfig:
    """Sizes and knobs of one data path instance.

    ``pickup_s``: after the data path is *first* attached (not after a reattach), TCP
    packets without SYN create flows for this many seconds, so deploying on a live
    gateway does not cut its connections; never in a tunnel that has torn its flows down
    (generation bumped), so a connection flowpin tore down is not adopted again.
    ``pin=False`` keeps the maps private to this process (tests, benchmark).
    """

    instance: str = "default"
    flows4_max: int = 1 << 20
    flows6_max: int = 1 << 18
    selectors_max: int = 4096
    tunnels_max: int = 4096
    pickup_s: int = 60
    event_interval_ms: int = 1000
    nonvpn_percent: int = 50
    attach: str = "auto"  # tcx.ATTACH_MODES: auto (tcx where the kernel has it), tcx, clsact
    pin: bool = True
    # BTF: the maps' and programs' types and source lines, for bpftool's dumps and the
    # verifier's log. Without it the compile takes ~20 % less and the instructions are the
    # same (tests/datapath/test_btf.py compares them): the test suite builds without.
    btf: bool = True
    cflags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _INSTANCE.match(self.instance):
            raise ValueError(f"instance name {self.instance!r}: use [A-Za-z0-9_.-], 1-64 "
                             "chars, starting with a letter or digit")
        if self.flows4_max < 1 or self.flows6_max < 1 or self.tunnels_max < 2:
            raise ValueError("map sizes must be positive (and tunnels_max >= 2)")
        if not 1 <= self.nonvpn_percent <= 100:
            raise ValueError("nonvpn_percent must be 1-100 (100: no budget)")
        if self.attach not in tcx.ATTACH_MODES:
            raise ValueError(f"attach mode {self.attach!r}: one of "
                             f"{', '.join(tcx.ATTACH_MODES)}")

    def nonvpn_limit(self, family: int) -> int:
        """Most non-VPN flows tracked per family (0 = no budget): the rest of the table
        stays free for VPN flows, whatever a LAN host sends elsewhere."""
        if self.nonvpn_percent >= 100:
            return 0
        size = self.flows4_max if family == 4 else self.flows6_max
        return max(1, size * self.nonvpn_percent // 100)

    @property
    def pin_dir(self) -> Path:
        return PIN_ROOT / self.instance


def bpf_source(entry: str = ENTRY, package: str = "flowpin_bpf",
               root: Traversable | None = None) -> str:
    """The C of ``entry`` (in ``package``) with the project's quoted includes expanded (each
    once). Includes are looked up beside the including file, then at ``package``'s root, then
    in the data path's own ``flowpin_bpf``: programs outside it (the benchmarks') share its
    headers that way. ``root``: read that folder (a ``bpf/`` tree of another revision, say)
    instead of the package, alone."""
    if root is None:
        root = files(package)
        roots = [root] if package == "flowpin_bpf" else [root, files("flowpin_bpf")]
    else:
        roots = [root]
    seen: set[str] = set()

    def expand(node: Traversable, rel: str) -> str:
        out = []
        for line in node.read_text().splitlines():
            m = _INCLUDE.match(line)
            if not m:
                out.append(line)
                continue
            name = m.group(1)
            # quoted includes are relative to the including file, then to the package root
            base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
            cand = base + name
            target = root.joinpath(*cand.split("/"))
            for other in roots:
                if target.is_file():
                    break
                cand = name
                target = other.joinpath(*name.split("/"))
            if not target.is_file():
                raise DatapathError(f"{rel}: include \"{name}\" not found in {package}")
            cand = os.path.normpath(cand)
            if cand not in seen:
                seen.add(cand)
                out.append(f"// ---- {cand}")
                out.append(expand(target, cand))
        return "\n".join(out)

    return expand(root.joinpath(entry), entry)


def _require_bcc() -> Any:
    try:
        import bcc
    except ImportError as exc:  # pragma: no cover - environment problem
        raise DatapathError(
            "bcc (python3-bpfcc) is not importable: install it and use a venv made with "
            "--system-site-packages") from exc
    return bcc


def ensure_bpffs() -> None:
    """Mount bpffs on /sys/fs/bpf when it is not mounted (needs root)."""
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 2 and parts[1] == str(BPFFS) and parts[2] == "bpf":
                return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    BPFFS.mkdir(parents=True, exist_ok=True)
    if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise DatapathError(f"cannot mount bpffs on {BPFFS}: {os.strerror(err)}")


def _cflags(cfg: DatapathConfig) -> list[str]:
    flags = [
        f"-DFP_FLOWS4_MAX={cfg.flows4_max}",
        f"-DFP_FLOWS6_MAX={cfg.flows6_max}",
        f"-DFP_SELECTORS_MAX={cfg.selectors_max}",
        f"-DFP_TUNNELS_MAX={cfg.tunnels_max}",
    ]
    if cfg.pin:
        flags.append(f'-DFP_PIN_DIR="{cfg.pin_dir}"')
    if not cfg.btf:
        flags.append("-g0")  # bcc emits BTF from the debug info: none without it
    return flags + list(cfg.cflags)


def replace_filter(ipr: Any, index: int, parent: str, fd: int, name: str) -> None:
    """Put program ``fd`` on the clsact hook ``parent`` of interface ``index`` as flowpin's
    filter (our handle and priority, direct action), replacing ours in place: there is no
    moment without a filter."""
    ipr.tc("replace-filter", "bpf", index, handle=FILTER_HANDLE, fd=fd, name=name,
           parent=parent, prio=FILTER_PRIO, classid=1, direct_action=True)


class Datapath:
    """One flowpin data path instance: its programs, its (pinned) maps, its attachments.

    Typical use::

        dp = Datapath(DatapathConfig(instance="gw1"))
        dp.load()                       # compile; reuse pinned maps if present
        dp.attach("lan0", netns="gw1")  # clsact ingress + egress
        dp.table.set_tunnel(1, up=False, preserve=True)
        ...
        dp.detach()                     # filters gone, pins kept (purge=True removes them)
    """

    def __init__(self, config: DatapathConfig | None = None) -> None:
        self.config = config or DatapathConfig()
        self._bpf: Any = None
        self._fds: dict[str, int] = {}
        self._table: FlowTable | None = None
        self.attached: list[tuple[str, str | None]] = []
        self.reused_pins = False
        self.probe: tcx.Probe | None = None
        # tcx links held by fd (unpinned data paths: they live as long as this object),
        # by (interface, netns, hook)
        self._links: dict[tuple[str, str | None, str], int] = {}
        # what the last attach did on each hook ("created", "updated", "kept", "replaced")
        self.last_attach: dict[tuple[str, str], str] = {}

    # -- compile -----------------------------------------------------------------------
    def load(self) -> Datapath:
        """Compile and load both programs. Reuses pinned maps if they exist."""
        if self._bpf is not None:
            return self
        if os.geteuid() != 0:
            raise DatapathError("loading eBPF programs needs root")
        bcc = _require_bcc()
        cfg = self.config
        try:
            self.probe = tcx.probe(cfg.attach)
        except OSError as exc:
            raise DatapathError(str(exc)) from exc
        if cfg.pin:
            ensure_bpffs()
            check_layout(cfg.pin_dir)
            self.reused_pins = (cfg.pin_dir / "fp_flows4").exists()
            drop_outgrown_counters(cfg.pin_dir)
        try:
            self._bpf = bcc.BPF(text=bpf_source().encode(), cflags=_cflags(cfg))
            for name in (PROG_OUTBOUND, PROG_INBOUND, PROG_WAN_OUT, PROG_WAN_IN):
                self._fds[name] = self._bpf.load_func(name.encode(), bcc.BPF.SCHED_CLS).fd
        except Exception as exc:
            self._bpf = None
            raise DatapathError(f"compiling/loading {ENTRY} failed: {exc}") from exc
        self._table = FlowTable(self._bpf)
        self._table.update_config(pickup_s=cfg.pickup_s,
                                  event_interval_ms=cfg.event_interval_ms)
        for fam in (4, 6):
            self._table.set_nonvpn_limit(fam, cfg.nonvpn_limit(fam))
        self.calibrate_clock()
        return self

    def calibrate_clock(self, interval_s: float = 0.2) -> int:
        """Map jiffies to CLOCK_MONOTONIC for the data path's clock (see clock.h): two
        (jiffies, ns) samples taken in the kernel ``interval_s`` apart give HZ, the later
        one the base. Returns HZ; 0 (and the coarse clock) if jiffies did not move."""
        import bcc

        fd = self._bpf.load_func(PROG_CLOCK.encode(), bcc.BPF.SCHED_CLS).fd
        # Any frame will do: the probe program only samples the two clocks. An ARP frame
        # (EtherType 0x0806) of the minimum size, so no flow program would care either.
        frame = bytes(12) + (0x0806).to_bytes(2, "big") + bytes(46)
        probe = self._bpf[b"fp_clock_sample"]

        def sample() -> tuple[int, int]:
            prog_test_run(fd, frame)
            v = probe[ctypes.c_uint32(0)]
            return v.jiffies, v.mono_ns

        j0, n0 = sample()
        time.sleep(interval_s)
        j1, n1 = sample()
        if j1 <= j0:
            self.table.update_config(ns_per_jiffy=0)
            return 0
        measured = (n1 - n0) / (j1 - j0)
        hz = min(HZ_CANDIDATES, key=lambda h: abs(1e9 / h - measured))
        self.table.update_config(base_ns=n1, base_jiffies=j1, ns_per_jiffy=round(1e9 / hz))
        return hz

    @property
    def bpf(self) -> Any:
        if self._bpf is None:
            raise DatapathError("data path not loaded: call load() first")
        return self._bpf

    @property
    def table(self) -> FlowTable:
        if self._table is None:
            raise DatapathError("data path not loaded: call load() first")
        return self._table

    @property
    def mode(self) -> str:
        """The attach mode in use: "tcx" or "clsact" (probed at load)."""
        if self.probe is None:
            raise DatapathError("data path not loaded: call load() first")
        return self.probe.mode

    def prog_fd(self, name: str = PROG_OUTBOUND) -> int:
        """File descriptor of a loaded program (for BPF_PROG_TEST_RUN)."""
        self.load()
        return self._fds[name]

    # -- attach / detach ---------------------------------------------------------------
    @staticmethod
    def _iproute(netns: str | None) -> Any:
        from pyroute2 import IPRoute

        return IPRoute(netns=netns) if netns else IPRoute()

    def attach(self, ifname: str, netns: str | None = None) -> None:
        """Attach on ``ifname`` (optionally in network namespace ``netns``): ingress =
        outbound (LAN -> tunnel), egress = inbound. Replaces a filter left by a previous
        loader atomically. Starts the pickup window on the very first attach."""
        self._attach(ifname, netns, ((PROG_OUTBOUND, PARENT_INGRESS),
                                     (PROG_INBOUND, PARENT_EGRESS)))
        if (ifname, netns) not in self.attached:
            self.attached.append((ifname, netns))
        self._start_pickup_window()

    def attach_wan(self, ifname: str, netns: str | None = None) -> None:
        """Attach the WAN guard on ``ifname``: egress drops tunnel traffic about to leave in
        clear, ingress drops tunnel traffic arriving in clear (see guard.h). Replaces a
        guard left by a previous loader atomically, like :meth:`attach`."""
        self._attach(ifname, netns, ((PROG_WAN_OUT, PARENT_EGRESS),
                                     (PROG_WAN_IN, PARENT_INGRESS)))
        if (ifname, netns) not in self.attached:
            self.attached.append((ifname, netns))

    def _start_pickup_window(self) -> None:
        cfg = self.table.config()
        if cfg.attach_ns == 0:
            self.table.update_config(attach_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def _attach(self, ifname: str, netns: str | None,
                progs: tuple[tuple[str, str], ...]) -> None:
        self.load()
        with self._iproute(netns) as ipr:
            links = ipr.link_lookup(ifname=ifname)
            if not links:
                raise DatapathError(f"interface {ifname!r} not found"
                                    + (f" in netns {netns!r}" if netns else ""))
            idx = links[0]
            link_type = ipr.link("get", index=idx)[0]["ifi_type"]
            if link_type != ARPHRD_ETHER:
                # The programs parse Ethernet frames; on an L3 device (tun, WireGuard, ipip:
                # no link header) every packet would read as not-IP and pass unchecked.
                raise DatapathError(f"interface {ifname!r} is not an Ethernet device (link "
                                    f"type {link_type}): flowpin's hooks need one; an "
                                    "L3 device (tun, WireGuard, ...) is refused rather than "
                                    "left unfiltered")
            if self.mode == "tcx":
                for prog, parent in progs:
                    self._attach_link(ifname, netns, HOOK_OF[parent], self._fds[prog])
                # a clsact install switched to tcx: its filters go once the links are on
                _del_filters(ipr, idx, ifname)
                return
            try:
                ipr.tc("add", "clsact", idx)
            except Exception as exc:  # EEXIST: clsact already there (ours or another's)
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise DatapathError(f"adding clsact on {ifname}: {exc}") from exc
            for prog, parent in progs:
                replace_filter(ipr, idx, parent, self._fds[prog], prog)
                self.last_attach[(ifname, HOOK_OF[parent])] = "replaced"
        # a tcx install switched to clsact: its links go once the filters are on
        self._detach_links(ifname, netns)

    def link_pin(self, ifname: str, hook: str) -> Path:
        """Where the tcx link of ``ifname``'s ``hook`` is pinned."""
        return self.config.pin_dir / tcx.pin_name(ifname, hook)

    def link_fd(self, ifname: str, netns: str | None, hook: str) -> int | None:
        """A new fd of flowpin's tcx link on ``ifname``'s ``hook`` (pinned, or held by
        this object); None when there is none. The caller closes it."""
        held = self._links.get((ifname, netns, hook))
        if held is not None:
            return os.dup(held)
        path = self.link_pin(ifname, hook)
        if self.config.pin and path.exists():
            return libbpf.obj_get(str(path))
        return None

    def _attach_link(self, ifname: str, netns: str | None, hook: str, prog_fd: int) -> None:
        old = self.link_fd(ifname, netns, hook)
        try:
            def attach() -> tuple[int, str]:
                index = tcx.ifindex(ifname)
                if not index:
                    raise DatapathError(f"interface {ifname!r} not found")
                return tcx.attach(prog_fd, index, hook, old)

            fd, done = tcx.in_netns(netns, attach)
        except OSError as exc:
            if old is not None:
                os.close(old)
            raise DatapathError(f"tcx {hook} on {ifname}: {exc}") from exc
        self.last_attach[(ifname, hook)] = done
        if fd == old:
            os.close(fd)
            return
        # a new link: pinned (over a defunct one, or one of an interface that had this
        # name) before the old one is let go
        if self.config.pin:
            tcx.pin(fd, self.link_pin(ifname, hook))
            os.close(fd)
        else:
            prev = self._links.pop((ifname, netns, hook), None)
            if prev is not None:
                os.close(prev)
            self._links[(ifname, netns, hook)] = fd
        if old is not None:
            os.close(old)

    def _detach_links(self, ifname: str, netns: str | None) -> None:
        """Take flowpin's tcx links off ``ifname`` and drop their pins."""
        for hook in tcx.HOOKS:
            fd = self._links.pop((ifname, netns, hook), None)
            if fd is None and self.config.pin:
                path = self.link_pin(ifname, hook)
                if path.exists():
                    fd = libbpf.obj_get(str(path))
                    path.unlink()
            if fd is not None:
                try:
                    tcx.detach(fd)
                finally:
                    os.close(fd)

    def detach(self, ifname: str | None = None, netns: str | None = None,
               purge: bool = False) -> None:
        """Remove our filters from ``ifname`` (default: every interface attached by this
        object). Pins stay unless ``purge``: flows survive for the next loader."""
        targets = [(ifname, netns)] if ifname else list(self.attached)
        for name, ns in targets:
            if name is None:
                continue
            detach_interface(name, ns)
            self._detach_links(name, ns)
            if (name, ns) in self.attached:
                self.attached.remove((name, ns))
        if purge:
            self.purge_pins()

    def purge_pins(self) -> None:
        """Forget every flow of this instance: remove its pin directory."""
        purge_pins(self.config.instance)

    def close(self) -> None:
        """Release programs and map fds (filters and pins stay; so do tcx links if pinned:
        an unpinned data path's links go with it)."""
        for fd in self._links.values():
            os.close(fd)
        self._links.clear()
        if self._bpf is not None:
            self._bpf.cleanup()
        self._bpf = None
        self._table = None
        self._fds.clear()


def detach_interface(ifname: str, netns: str | None = None) -> None:
    """Remove flowpin's two filters from ``ifname``; missing filters are not an error."""
    with Datapath._iproute(netns) as ipr:
        links = ipr.link_lookup(ifname=ifname)
        if links:
            _del_filters(ipr, links[0], ifname)


def _del_filters(ipr: Any, index: int, ifname: str) -> None:
    for parent in (PARENT_INGRESS, PARENT_EGRESS):
        try:
            ipr.tc("del-filter", "bpf", index, handle=FILTER_HANDLE, parent=parent,
                   prio=FILTER_PRIO)
        except Exception as exc:  # ENOENT / EINVAL: nothing there
            if getattr(exc, "code", None) not in (errno.ENOENT, errno.EINVAL):
                raise DatapathError(f"removing filter from {ifname}: {exc}") from exc


def _open_pinned(path: Path) -> int:
    """A file descriptor of the map pinned at ``path`` (libbpf's bpf_obj_get, through
    bcc's libbcc); the caller closes it."""
    lib = _require_bcc().libbcc.lib
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_obj_get.restype = ctypes.c_int
    fd = lib.bpf_obj_get(os.fsencode(path))
    if fd < 0:
        raise DatapathError(f"cannot open the pinned map {path} (bpf_obj_get: {fd})")
    return fd


def hold_pinned_tunnels(instance: str) -> int:
    """Set every tunnel of ``instance``'s pinned maps DOWN (generation and flags kept);
    return how many were UP. Runs before anything is compiled: programs a previous daemon
    left attached keep filtering on these maps, and a daemon that is starting -- or fails
    to -- knows nothing of the SAs yet, so held flows must wait and nothing may pass as if
    its tunnel were up. Uses libbpf (through bcc's libbcc) on the pinned map; no compile."""
    path = PIN_ROOT / instance / "fp_tunnels"
    if not path.exists():
        return 0
    check_layout(path.parent)  # another layout's tunnel words are not ours to rewrite
    lib = _require_bcc().libbcc.lib
    fd = _open_pinned(path)
    held = 0
    try:
        key, next_key = ctypes.c_uint32(0), ctypes.c_uint32(0)
        word = (ctypes.c_uint8 * TUNNEL_WORD.size)()
        first = True
        while lib.bpf_get_next_key(fd, None if first else ctypes.byref(key),
                                   ctypes.byref(next_key)) == 0:
            first = False
            key.value = next_key.value
            if lib.bpf_lookup_elem(fd, ctypes.byref(key), word) != 0:
                continue
            generation, state, flags, pad = TUNNEL_WORD.unpack(bytes(word))
            if state != TUNNEL_DOWN:
                ctypes.memmove(word, TUNNEL_WORD.pack(generation, TUNNEL_DOWN, flags, pad),
                               TUNNEL_WORD.size)
                if lib.bpf_update_elem(fd, ctypes.byref(key), word, 0) == 0:
                    held += 1
    finally:
        os.close(fd)
    return held


def _pinned_max_entries(path: Path) -> int:
    """max_entries of the map pinned at ``path`` (from /proc/self/fdinfo; no compile)."""
    fd = _open_pinned(path)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "max_entries":
                    return int(value)
    finally:
        os.close(fd)
    raise DatapathError(f"no max_entries in the fdinfo of {path}")


def drop_outgrown_counters(pin_dir: Path) -> bool:
    """Remove an ``fp_counters`` pin made by an older build with fewer slots than this one
    counts (a verdict reason or stat added since): reused, the new slots would never be
    counted and reading them would fail. Counters are statistics; every other map keeps
    its state. Returns whether the pin was removed."""
    path = pin_dir / "fp_counters"
    if not path.exists() or _pinned_max_entries(path) >= STAT_MAX:
        return False
    path.unlink()
    return True


def purge_pins(instance: str) -> None:
    """Remove the pin directory of ``instance``: its maps, and its tcx links, which are
    detached first (a link also held by an fd elsewhere would stay on its hook)."""
    if not _INSTANCE.match(instance):
        raise DatapathError(f"refusing to purge instance {instance!r}: not an instance name")
    d = PIN_ROOT / instance
    if not d.is_dir():
        return
    for path in d.glob(f"{tcx.LINK_PREFIX}*"):
        fd = libbpf.obj_get(str(path))
        try:
            tcx.detach(fd)
        finally:
            os.close(fd)
    shutil.rmtree(d)


def layout_id(texts: Iterable[str] | None = None) -> int:
    """The layout id (a u64) of the C ``texts`` (default: this build's LAYOUT_SOURCES):
    a hash of the code without its comments, with spacing collapsed."""
    if texts is None:
        root = files("flowpin_bpf")
        texts = [root.joinpath(name).read_text() for name in LAYOUT_SOURCES]
    h = hashlib.sha256()
    for text in texts:
        h.update(" ".join(_C_COMMENT.sub(" ", text).split()).encode() + b"\0")
    return int.from_bytes(h.digest()[:8], "little")


def pinned_layout(pin_dir: Path) -> int | None:
    """The layout id pinned in ``pin_dir``; None if there is none."""
    path = pin_dir / LAYOUT_PIN
    if not path.exists():
        return None
    fd = libbpf.obj_get(str(path))
    try:
        return int.from_bytes(libbpf.array_lookup(fd, 0, 8), "little")
    finally:
        os.close(fd)


def check_layout(pin_dir: Path) -> None:
    """Let this build use the maps pinned in ``pin_dir`` only if they are of its layout.

    An empty (or new) ``pin_dir`` gets this build's layout id pinned first, before any map,
    so that maps are never there without it. Maps of another layout -- or of a flowpin from
    before layout ids -- raise :class:`LayoutMismatch`, touched by nothing: read with this
    build's structs their flows would be garbage, and dropping them on our own would release
    held flows. The programs that made them stay attached and keep filtering on them (held
    flows stay held, the WAN guard stays) until an admin decides."""
    want = layout_id()
    have = pinned_layout(pin_dir)
    if have == want:
        return
    if have is None and not (pin_dir.is_dir() and any(pin_dir.iterdir())):
        pin_dir.mkdir(parents=True, exist_ok=True)
        fd = libbpf.array_create("fp_layout", 8)
        try:
            libbpf.array_update(fd, 0, want.to_bytes(8, "little"))
            libbpf.obj_pin(fd, str(pin_dir / LAYOUT_PIN))
        finally:
            os.close(fd)
        return
    found = (f"layout {have:016x}" if have is not None
             else "of a flowpin from before layout ids (no layout pin)")
    raise LayoutMismatch(
        f"the pinned maps in {pin_dir} are {found}; this flowpin needs layout {want:016x}. "
        "Their flows cannot be carried over, and they are left as they are: the programs "
        "that made them still filter on them (held flows stay held, the WAN guard stays). "
        f"To start afresh, dropping every flow they hold (held connections will be reset): "
        f"`rm -r {pin_dir}`, then start the daemon again (it replaces those programs in "
        "place). To keep the flows: go back to the flowpin version that pinned them.")
