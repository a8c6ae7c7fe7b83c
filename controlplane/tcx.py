"""tcx: flowpin's TC hooks as BPF links, where the kernel has them (Linux 6.6+).

A tcx link attaches one program to an interface's ingress or egress, before any clsact
filter runs; it lives as long as an fd or a bpffs pin holds it. flowpin pins its links
beside its maps (``fp_link_<interface>_<hook>`` in the instance's pin directory), so the
programs outlive the daemon like the clsact filters do, and a new daemon *updates* the
pinned link to its program in one step (BPF_LINK_UPDATE with BPF_F_REPLACE and the program
it expects to find): every packet sees the old program or the new one, never none.

Programs on a tcx hook run in order; a program's TCX_NEXT (-1, the value of TC_ACT_UNSPEC)
lets the next one decide. flowpin returns it for traffic that is not its own (see
bpf/lib/verdict.h), so other tcx users (Cilium, a firewall) still see what flowpin passes.

When the interface is deleted, the kernel detaches its links: a pinned link then is
*defunct* (its ifindex reads 0) and filters nothing. :func:`attach` replaces it with a new
link on the interface that now carries the name.

The link calls go through :mod:`controlplane.libbpf`; an ifindex is a network namespace's,
so calls for another namespace run in a short-lived thread that joined it (setns is per
thread), never in the caller's.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from controlplane import libbpf

ATTACH_MODES = ("auto", "tcx", "clsact")
HOOKS = {"ingress": libbpf.BPF_TCX_INGRESS, "egress": libbpf.BPF_TCX_EGRESS}
LINK_PREFIX = "fp_link_"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000  # linux/sched.h: setns(2)'s namespace type
T = TypeVar("T")


@dataclass(frozen=True)
class Probe:
    """Which attach mode a data path uses, and why."""

    mode: str  # "tcx" or "clsact"
    configured: str  # "auto", "tcx" or "clsact"
    kernel_has_tcx: bool

    def why(self) -> str:
        """``auto: the kernel has tcx``, ``configured; the kernel has tcx`` ..."""
        has = ("the kernel has tcx" if self.kernel_has_tcx else "the kernel has no tcx "
               "(before Linux 6.6)")
        return f"auto: {has}" if self.configured == "auto" else f"configured; {has}"

    def describe(self) -> str:
        """``tcx (auto: the kernel has tcx)``"""
        return f"{self.mode} ({self.why()})"


def probe(configured: str = "auto") -> Probe:
    """The attach mode for ``configured`` ("auto": tcx where the kernel has it, else
    clsact). "tcx" on a kernel without it is an error, not a silent fallback."""
    if configured not in ATTACH_MODES:
        raise ValueError(f"attach mode {configured!r}: one of {', '.join(ATTACH_MODES)}")
    has = libbpf.has_tcx()
    if configured == "tcx" and not has:
        raise OSError("attach mode tcx: the running kernel has no tcx (Linux 6.6+); use "
                      "auto or clsact")
    mode = configured if configured != "auto" else ("tcx" if has else "clsact")
    return Probe(mode, configured, has)


def pin_name(ifname: str, hook: str) -> str:
    """The pin of the link on ``ifname``'s ``hook``. bpffs refuses names with a dot (VLAN
    interfaces have one): "." and "%" are escaped as %2e and %25."""
    return f"{LINK_PREFIX}{ifname.replace('%', '%25').replace('.', '%2e')}_{hook}"


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` in the network namespace ``netns`` (None: here)."""
    if netns is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread
            error.append(exc)

    t = threading.Thread(target=run, name=f"netns-{netns}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def ifindex(ifname: str) -> int:
    """The index of ``ifname`` in this thread's network namespace; 0 if there is none."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return 0


@dataclass(frozen=True)
class Hook:
    """A flowpin tcx link as the kernel reports it."""

    hook: str  # "ingress" / "egress"
    link: libbpf.LinkInfo
    prog_name: str  # the program it runs ("" when it could not be read)


def read(link_fd: int) -> Hook:
    info = libbpf.link_info(link_fd)
    name = ""
    try:
        pfd = libbpf.prog_fd_by_id(info.prog_id)
        try:
            name = libbpf.prog_info(pfd).name
        finally:
            os.close(pfd)
    except OSError:
        pass
    hook = "ingress" if info.attach_type == libbpf.BPF_TCX_INGRESS else "egress"
    return Hook(hook, info, name)


def attach(prog_fd: int, index: int, hook: str, link_fd: int | None) -> tuple[int, str]:
    """Put ``prog_fd`` on ``hook`` of the interface ``index`` (this thread's namespace),
    reusing the link ``link_fd`` (a pinned one, or None). Returns (the fd of the link to
    keep -- ``link_fd`` itself when it was reused --, what was done: "updated", "kept" or
    "created").

    A live link on this interface is updated in place to ``prog_fd`` with BPF_F_REPLACE
    and the program it runs now (EPERM if another loader changed it in between: the
    caller retries). A defunct link, or one on an interface that had this name before, is
    left to the caller to drop once the new link is pinned."""
    if link_fd is not None:
        info = libbpf.link_info(link_fd)
        if not info.defunct and info.ifindex == index:
            if info.prog_id == libbpf.prog_info(prog_fd).id:
                return link_fd, "kept"
            old = libbpf.prog_fd_by_id(info.prog_id)
            try:
                libbpf.link_update(link_fd, prog_fd, old)
            finally:
                os.close(old)
            return link_fd, "updated"
    return libbpf.link_create(prog_fd, index, HOOKS[hook]), "created"


def pin(link_fd: int, path: Path) -> None:
    """Pin ``link_fd`` at ``path``, replacing what is pinned there in one step (pinned under
    a temporary name, then renamed over it): the old link stays pinned until the new one
    is, so a crash in between leaves a hook, never none."""
    tmp = path.with_name(f"{LINK_PREFIX}new_{os.getpid()}_{threading.get_ident()}")
    libbpf.obj_pin(link_fd, str(tmp))
    os.replace(tmp, path)


def detach(link_fd: int) -> None:
    """Take the link off its hook now (also when other fds or pins still hold it); a link
    already defunct is not an error."""
    if not libbpf.link_info(link_fd).defunct:
        libbpf.link_detach(link_fd)
