"""Network namespaces for the lab: create, enter, find what runs inside, remove.

Namespaces are made and removed with pyroute2. Entering one (for a daemon, a sysctl or a
command) is done in a *child* process with setns(2), so the calling process never changes
namespace: a half-switched control plane would be far worse than a fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pickle
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import netns as _netns

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

T = TypeVar("T")


class NetnsError(RuntimeError):
    """A namespace operation failed; the message says which and why."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def create(name: str) -> None:
    _netns.create(name)


def remove(name: str) -> None:
    if exists(name):
        _netns.remove(name)


def listing(prefix: str = "") -> list[str]:
    return sorted(n for n in _netns.listnetns() if n.startswith(prefix))


def inode(name: str) -> int:
    return os.stat(path(name)).st_ino


def enter(name: str) -> None:
    """Move the *calling* process into namespace ``name`` (use in a child only)."""
    fd = os.open(path(name), os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns({name})")
    finally:
        os.close(fd)


def private_run(run_dir: str | os.PathLike[str]) -> None:
    """Give the calling process a private mount namespace whose ``/run`` is ``run_dir``.

    charon keeps its pid file under /run and refuses to start when one exists: binding a
    per-gateway directory over /run lets one charon run per namespace, and leaves its
    socket, pid file and log in a place the host can read. Use in a child only.
    """
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Stop our mounts from propagating back to the host's mount namespace.
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    src = os.fsencode(str(run_dir))
    _check(_libc.mount(src, b"/run", None, MS_BIND, None), f"mount --bind {run_dir} /run")


def preexec(name: str, run_dir: str | os.PathLike[str] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess that enters ``name`` (and a private /run)."""

    def _fn() -> None:
        enter(name)
        if run_dir is not None:
            private_run(run_dir)
        # Own process group, so the lab can signal a daemon and its children together.
        os.setpgid(0, 0)

    return _fn


def call(name: str, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
    """Run ``fn(*args)`` in a forked child inside namespace ``name``; return its result.

    The result (or the exception) travels back pickled through a pipe.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        try:
            enter(name)
            payload: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:  # noqa: BLE001 -- handed to the parent
            payload = (False, exc)
        try:
            data = pickle.dumps(payload)
        except Exception as exc:  # noqa: BLE001
            data = pickle.dumps((False, NetnsError(f"unpicklable result: {exc!r}")))
        with os.fdopen(wfd, "wb") as w:
            w.write(data)
        os._exit(0)
    os.close(wfd)
    deadline = time.monotonic() + timeout
    chunks = []
    with os.fdopen(rfd, "rb") as r:
        chunks.append(r.read())
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise NetnsError(f"call in {name} timed out")
        time.sleep(0.01)
    raw = b"".join(chunks)
    if not raw:
        raise NetnsError(f"call in {name} died without an answer")
    ok, value = pickle.loads(raw)
    if not ok:
        raise value
    return value


def sysctl(name: str, settings: dict[str, str]) -> None:
    """Write ``/proc/sys`` keys (dotted names) inside namespace ``name``."""

    def _write(items: list[tuple[str, str]]) -> None:
        for key, value in items:
            Path("/proc/sys", *key.split(".")).write_text(value)

    call(name, _write, list(settings.items()))


def snmp_counter(pid: int, group: str, counter: str) -> int:
    """One counter of the SNMP MIB of the namespace ``pid`` runs in (/proc/PID/net/snmp:
    e.g. ``Tcp`` ``PassiveOpens``, ``Udp`` ``RcvbufErrors``), read without entering it."""
    with open(f"/proc/{pid}/net/snmp") as fh:
        names, values = [ln.split() for ln in fh if ln.startswith(f"{group}:")][:2]
    return int(values[names.index(counter)])


def pids(name: str) -> list[int]:
    """Every process whose network namespace is ``name``."""
    try:
        ino = inode(name)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino == ino:
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return [p for p in found if p != os.getpid()]


def kill_all(name: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process in namespace ``name`` and wait until they are gone."""
    victims = pids(name)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pids(name):
        time.sleep(0.05)
    return victims
