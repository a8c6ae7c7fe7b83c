"""tcx links: the probe, pinned links updated in place with no window, other tcx programs
after flowpin, defunct links, switching between tcx and clsact, purge.

A veth pair v0/v1 in a namespace of its own; flowpin's LAN hooks on v0. Frames are sent
*out of* v0 with a packet socket, so they cross v0's egress hook (fp_inbound) and arrive on
v1, where a packet socket counts what got through: the witness of a window is a frame
flowpin must drop (a TCP segment without SYN of no flow, from a tunnel's remote side:
DROP_NO_CONN) seen on v1. These tests use tcx explicitly, whatever FLOWPIN_TEST_ATTACH
says: they are about tcx (the kernel here has it; a kernel without it fails the probe test).
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute, netns

from controlplane import libbpf, tcx
from controlplane.datapath import (
    PROG_INBOUND,
    PROG_OUTBOUND,
    Datapath,
    DatapathConfig,
    purge_pins,
)
from controlplane.hooks import missing_filters
from lab import hooks as hook_witness
from lab import packets as tr

pytestmark = pytest.mark.bpf

PREFIX = "fptest-tcx-"
TUN = 1
LOCAL, REMOTE = "10.1.0.5", "10.2.0.9"
MARK_PORT = 4242  # the destination port of the frames the witness counts
SMALL = {"flows4_max": 256, "flows6_max": 64, "tunnels_max": 8, "pickup_s": 0, "btf": False}


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"{PREFIX}{os.getpid()}"
    if name in netns.listnetns():
        netns.remove(name)
    netns.create(name)
    try:
        # IPv4 only: the kernel's own IPv6 packets on a new veth (router solicitations, MLD
        # reports) would pass flowpin as not its own and land in the other program's count
        def no_ipv6() -> None:
            for conf in ("all", "default"):
                with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                    f.write("1")

        tcx.in_netns(name, no_ipv6)
        with IPRoute(netns=name) as ipr:
            ipr.link("add", ifname="v0", kind="veth", peer={"ifname": "v1"})
            for dev in ("v0", "v1"):
                ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], state="up")
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def instance() -> Iterator[str]:
    if not _kernel_at_least(6, 6):  # Debian 12's own 6.1 (the VM): the probe test only
        pytest.skip("the kernel has no tcx (6.6+); the suite runs on clsact here")
    name = f"fptest-tcx-{os.getpid()}"
    purge_pins(name)
    try:
        yield name
    finally:
        purge_pins(name)


def _dp(instance: str, attach: str = "tcx") -> Datapath:
    dp = Datapath(DatapathConfig(instance=instance, attach=attach, **SMALL)).load()  # type: ignore[arg-type]
    t = dp.table
    t.add_selector(TUN, "10.1.0.0/16", "10.2.0.0/16")
    t.set_tunnel(TUN, up=True, preserve=True)
    return dp


def _packet_socket(ns: str, dev: str) -> socket.socket:
    netns.pushns(ns)
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    finally:
        netns.popns()
    s.bind((dev, 0))
    return s


class Witness:
    """Counts the frames to MARK_PORT that arrive on v1 (got through v0's egress)."""

    def __init__(self, ns: str) -> None:
        self.sock = _packet_socket(ns, "v1")
        self.sock.settimeout(0.2)
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            if len(frame) >= 38 and frame[23] in (6, 17) and \
                    int.from_bytes(frame[36:38], "big") == MARK_PORT:
                self.seen += 1

    def stop(self) -> int:
        time.sleep(0.3)  # frames still in flight
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        return self.seen


class Sender:
    """Sends ``frame`` out of v0 as fast as it can, until stopped."""

    def __init__(self, ns: str, frame: bytes) -> None:
        self.sock = _packet_socket(ns, "v0")
        self.frame = frame
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        send, frame = self.sock.send, self.frame
        while not self._stop.is_set():
            # ENOBUFS: what an egress hook drops is an error to the sender
            with contextlib.suppress(OSError):
                send(frame)
            self.sent += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self.sent


def _no_conn_frame(sport: int = 40000) -> bytes:
    """From the tunnel's remote side, not a SYN, of no flow: fp_inbound drops it."""
    return tr.tcp(REMOTE, LOCAL, sport, MARK_PORT, "A", seq=1, ack=1)


# -- the probe -----------------------------------------------------------------------------
def test_probe_finds_tcx_exactly_where_the_kernel_has_it() -> None:
    has = _kernel_at_least(6, 6)
    assert libbpf.has_tcx() is has
    p = tcx.probe("auto")
    assert p.mode == ("tcx" if has else "clsact") and p.kernel_has_tcx is has
    assert tcx.probe("clsact").mode == "clsact"
    if has:
        assert tcx.probe("tcx").describe() == "tcx (configured; the kernel has tcx)"
    else:
        with pytest.raises(OSError, match="no tcx"):
            tcx.probe("tcx")


def test_links_are_pinned_beside_the_maps_with_escaped_names(ns: str, instance: str) -> None:
    with IPRoute(netns=ns) as ipr:
        # a dot, as VLAN interfaces have (bpffs refuses dots in names)
        ipr.link("add", ifname="v0.7", kind="veth", peer={"ifname": "v2"})
    dp = _dp(instance)
    try:
        dp.attach("v0.7", netns=ns)
        pins = sorted(p.name for p in dp.config.pin_dir.glob("fp_link_*"))
        assert pins == ["fp_link_v0%2e7_egress", "fp_link_v0%2e7_ingress"]
        assert hook_witness.tcx_progs(ns, "v0.7") == {"ingress": [PROG_OUTBOUND],
                                                      "egress": [PROG_INBOUND]}
    finally:
        dp.close()
    # the pins hold the links: the programs outlive the loader
    assert hook_witness.tcx_progs(ns, "v0.7")["egress"] == [PROG_INBOUND]


# -- no window -----------------------------------------------------------------------------
@pytest.mark.parametrize("switch", ["update", "tcx<->clsact"])
def test_no_frame_escapes_across_replacements(ns: str, instance: str, switch: str) -> None:
    """Frames flowpin must drop, sent at full rate while the hooks are replaced again and
    again (a new program on the pinned link; or the mode switched back and forth): not
    one reaches v1. Every replacement happens while frames are flowing."""
    first = _dp(instance)
    second = _dp(instance, "clsact" if switch == "tcx<->clsact" else "tcx")
    witness = Witness(ns)
    sender = None
    try:
        first.attach("v0", netns=ns)
        before = first.table.counters()["DROP_NO_CONN"]
        sender = Sender(ns, _no_conn_frame())
        time.sleep(0.2)
        rounds = 0
        done: set[str] = set()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for dp in (second, first):
                dp.attach("v0", netns=ns)
                done.update(dp.last_attach.values())
                rounds += 1
        sent = sender.stop()
        sender = None
        dropped = first.table.counters()["DROP_NO_CONN"] - before
        escaped = witness.stop()
        assert rounds >= 20 and sent > 10 * rounds, (rounds, sent)
        assert dropped >= sent * 0.9, (dropped, sent)  # the frames did cross the hook
        assert escaped == 0, f"{escaped} of {sent} frames got through during {rounds} " \
                             "replacements"
        if switch == "update":
            assert done == {"updated"}
            assert hook_witness.tcx_progs(ns, "v0")["egress"] == [PROG_INBOUND]
        else:
            assert done == {"created", "replaced"}
    finally:
        if sender:
            sender.stop()
        witness.stop()
        first.close()
        second.close()


def test_a_restart_updates_the_pinned_link_in_place(ns: str, instance: str) -> None:
    dp = _dp(instance)
    dp.attach("v0", netns=ns)
    pin = str(dp.link_pin("v0", "egress"))
    fd = libbpf.obj_get(pin)
    before = libbpf.link_info(fd)
    dp.close()
    again = _dp(instance)
    try:
        again.attach("v0", netns=ns)
        after = libbpf.link_info(fd)
        assert again.last_attach[("v0", "egress")] == "updated"
        assert after.id == before.id and after.prog_id != before.prog_id  # same link
        assert after.prog_id == libbpf.prog_info(again.prog_fd(PROG_INBOUND)).id
        # BPF_F_REPLACE: an update that expects another program than the link runs fails
        with pytest.raises(OSError, match="Operation not permitted"):
            libbpf.link_update(fd, again.prog_fd(PROG_OUTBOUND), again.prog_fd(PROG_OUTBOUND))
    finally:
        os.close(fd)
        again.close()


# -- coexistence ---------------------------------------------------------------------------
def test_a_tcx_program_after_flowpin_decides_what_is_not_flowpins(ns: str,
                                                                  instance: str) -> None:
    """Another tcx program, attached after flowpin on the same hook, sees the traffic
    flowpin passes with TCX_NEXT (not its own: non-VPN), not flowpin's own tunnel traffic
    (TCX_PASS) nor what flowpin drops; and its drop of non-VPN traffic holds."""
    import bcc

    other = bcc.BPF(text=b"""
        BPF_ARRAY(seen, u64, 1);
        int other(struct __sk_buff *skb) {
            int zero = 0;
            u64 *c = seen.lookup(&zero);
            if (c) __sync_fetch_and_add(c, 1);
            return 2;  /* TCX_DROP: this program's own opinion */
        }""")
    fd = other.load_func(b"other", bcc.BPF.SCHED_CLS).fd
    dp = _dp(instance)
    link = None
    witness = Witness(ns)
    try:
        dp.attach("v0", netns=ns)
        index = tcx.in_netns(ns, lambda: tcx.ifindex("v0"))
        link = tcx.in_netns(ns, lambda: libbpf.link_create(fd, index, libbpf.BPF_TCX_EGRESS))
        assert hook_witness.tcx_progs(ns, "v0")["egress"] == [PROG_INBOUND, "other"]
        seen = other[b"seen"]

        def count() -> int:
            return int(seen[seen.Key(0)].value)

        cases = [  # (frame, flowpin's reason, reaches the other program)
            (tr.udp("10.7.0.1", "10.8.0.1", 5000, MARK_PORT), "PASS_NONVPN", True),
            (tr.udp(REMOTE, LOCAL, 5000, MARK_PORT), "PASS_NEW", False),
            (_no_conn_frame(40001), "DROP_NO_CONN", False),
        ]
        tx = _packet_socket(ns, "v0")
        with tx:
            for frame, reason, reaches in cases:
                c0, r0 = count(), dp.table.counters()[reason]
                with contextlib.suppress(OSError):  # ENOBUFS: dropped on the egress hook
                    tx.send(frame)
                time.sleep(0.1)
                assert dp.table.counters()[reason] == r0 + 1, reason
                assert count() == c0 + int(reaches), reason
        # flowpin passed the VPN datagram itself (TCX_PASS); the other program dropped the
        # non-VPN one; flowpin dropped the segment
        assert witness.stop() == 1
    finally:
        witness.stop()
        if link is not None:
            os.close(link)
        dp.close()
        other.cleanup()


# -- defunct links -------------------------------------------------------------------------
def test_a_deleted_interface_leaves_a_defunct_link_that_attach_replaces(ns: str,
                                                                         instance: str) -> None:
    dp = _dp(instance)
    try:
        dp.attach("v0", netns=ns)
        pin = str(dp.link_pin("v0", "ingress"))
        old = libbpf.obj_get(pin)
        with IPRoute(netns=ns) as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname="v0")[0])
            assert libbpf.link_info(old).defunct
            ipr.link("add", ifname="v0", kind="veth", peer={"ifname": "v1"})
            ipr.link("set", index=ipr.link_lookup(ifname="v0")[0], state="up")
            # the pin is there, its link is not on the new v0: a missing hook
            assert missing_filters(ipr, "v0", "lan", lambda i, h: dp.link_fd(i, ns, h)) == [
                "ingress", "egress"]
            dp.attach("v0", netns=ns)
            assert dp.last_attach[("v0", "ingress")] == "created"
            assert missing_filters(ipr, "v0", "lan", lambda i, h: dp.link_fd(i, ns, h)) == []
        new = libbpf.obj_get(pin)
        try:
            assert libbpf.link_info(new).id != libbpf.link_info(old).id
            assert not libbpf.link_info(new).defunct
        finally:
            os.close(new)
            os.close(old)
        assert hook_witness.tcx_progs(ns, "v0") == {"ingress": [PROG_OUTBOUND],
                                                    "egress": [PROG_INBOUND]}
        dp.detach("v0", netns=ns)  # a defunct link on the way out is no error either
        assert hook_witness.tcx_progs(ns, "v0") == {"ingress": [], "egress": []}
    finally:
        dp.close()


def test_detached_by_another_tool_is_a_missing_hook(ns: str, instance: str) -> None:
    dp = _dp(instance)
    try:
        dp.attach("v0", netns=ns)
        fd = libbpf.obj_get(str(dp.link_pin("v0", "egress")))
        libbpf.link_detach(fd)
        os.close(fd)
        with IPRoute(netns=ns) as ipr:
            assert missing_filters(ipr, "v0", "lan", lambda i, h: dp.link_fd(i, ns, h)) == [
                "egress"]
    finally:
        dp.close()


# -- purge ---------------------------------------------------------------------------------
def test_purge_removes_links_and_pins(ns: str, instance: str) -> None:
    dp = _dp(instance)
    dp.attach("v0", netns=ns)
    held = libbpf.obj_get(str(dp.link_pin("v0", "ingress")))  # someone else's fd on it
    try:
        dp.close()
        purge_pins(instance)
        assert not dp.config.pin_dir.exists()
        assert hook_witness.tcx_progs(ns, "v0") == {"ingress": [], "egress": []}
        assert libbpf.link_info(held).defunct
    finally:
        os.close(held)
