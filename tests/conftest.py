"""Shared test prerequisites, lab fixtures, and the test tiers.

Tests that need root, bpf, namespaces or charon *fail* with a message naming what is
missing (CI is root and installs everything through `make setup`); they never skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest

_counter = itertools.count()

# The suite's data paths and lab daemons compile without BTF: the same instructions
# (tests/datapath/test_btf.py), ~20 % less of the compile that most of the suite's time is.
os.environ.setdefault("FLOWPIN_LAB_NO_BTF", "1")


def require_lab_prerequisites() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the lab creates network namespaces)")
    if not any(os.access(p, os.X_OK) for p in ("/usr/lib/ipsec/charon",
                                               "/usr/libexec/ipsec/charon")):
        missing.append("charon (Debian package strongswan-charon)")
    if not os.path.exists("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"):
        missing.append("kernel-libipsec plugin (Debian package libcharon-extra-plugins)")
    for tool, pkg in (("tcpdump", "tcpdump"), ("ping", "iputils-ping")):
        if not shutil.which(tool):
            missing.append(f"{tool} (Debian package {pkg})")
    try:
        import nftables  # noqa: F401
    except ImportError:
        missing.append("libnftables for Python (Debian package python3-nftables)")
    if missing:
        pytest.fail("lab prerequisites missing: " + "; ".join(missing) + " -- run `make setup`"
                    " as root", pytrace=False)


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def unique_lab_name(tag: str) -> str:
    """Short, unique per test session and process, valid as a lab name."""
    return f"{tag[:5]}{os.getpid() % 10000}{next(_counter)}"


@contextlib.contextmanager
def lab_up(tag: str, **up: Any) -> Iterator[Any]:
    """A lab named after ``tag`` (see :func:`unique_lab_name`), brought up with ``up``'s
    options, and always removed afterwards."""
    require_lab_prerequisites()
    from lab.lab import Lab

    lb = Lab(unique_lab_name(tag))
    lb.up(**up)
    try:
        yield lb
    finally:
        lb.down()


def _module_tag(request: pytest.FixtureRequest) -> str:
    """The test module's name without ``test_``, as a lab name's tag (so a lab left behind
    says whose it is)."""
    module = request.module.__name__.rpartition(".")[2]
    return re.sub(r"[^a-z0-9]", "", module.removeprefix("test_"))


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A lab that is up for the whole module, and always removed afterwards."""
    with lab_up(_module_tag(request)) as lb:
        yield lb


@pytest.fixture(scope="module")
def plab(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A lab whose two flowpin daemons run with preserve-vpn-flows on, up for the whole
    module, and always removed afterwards."""
    with lab_up(_module_tag(request), preserve=True) as lb:
        yield lb


# --- Test tiers -----------------------------------------------------------------------------
# Three tiers, each a promise about what its tests need (docs/testing.md):
#   unit (no marker)  no root, no charon: `make unit` runs them as nobody, in seconds;
#   bpf               root (eBPF, namespaces, nftables) but no charon;
#   lab               starts real charons.
# A directory that holds one tier marks its tests, so nobody forgets a marker; elsewhere the
# module or the test carries it. A test marked other than its directory says is a collection
# error. Whether a test that is not marked `lab` starts a charon is watched while it runs (its
# setup and teardown included) and fails it; that an unmarked test needs no root is proven by
# `make unit`, which runs the unit tier as nobody.
TIERS = ("lab", "bpf")
DIRECTORY_TIERS = {"unit": "unit", "datapath": "bpf", "lab": "lab", "e2e": "lab"}


def tier_of(item: pytest.Item) -> str:
    marked = [t for t in TIERS if item.get_closest_marker(t)]
    return marked[0] if marked else "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        marked = [t for t in TIERS if item.get_closest_marker(t)]
        try:
            top = item.path.relative_to(config.rootpath / "tests").parts[0]
        except ValueError:
            top = ""
        want = DIRECTORY_TIERS.get(top)
        if len(marked) > 1:
            wrong.append(f"{item.nodeid}: marked {' and '.join(marked)}; a test has one tier")
        elif want is not None and marked and marked[0] != want:
            wrong.append(f"{item.nodeid}: marked {marked[0]}, but tests/{top} holds the "
                         f"{want} tier")
        elif want in TIERS and not marked:
            item.add_marker(want)
    if wrong:
        raise pytest.UsageError("tests in the wrong tier:\n  " + "\n  ".join(wrong))


# The process name the watch looks for. Its own tests (tests/unit/test_tiers.py) start a
# stand-in under another name, so that the watch of the run around them does not see it.
CHARON_NAME = os.environ.get("FLOWPIN_TEST_CHARON_NAME", "charon")


def _proc_stat(pid: str) -> tuple[str, int, str] | None:
    """(comm, ppid, start time) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    head, _, tail = raw.rpartition(b")")  # comm is in parentheses and may hold either
    fields = tail.split()
    return head.partition(b"(")[2].decode(errors="replace"), int(fields[1]), fields[19].decode()


def charon_descendants() -> set[str]:
    """The charons descended from this process, each as "pid/start time" (pids are reused).
    Charons of other test runs on the machine are not ours and are not counted."""
    procs = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (st := _proc_stat(pid)) is not None:
            procs[int(pid)] = st
    me, found = os.getpid(), set()
    for pid, (comm, ppid, start) in procs.items():
        if comm != CHARON_NAME:
            continue
        hops = 0
        while ppid > 1 and ppid != me and hops < 64:
            ppid, hops = procs[ppid][1] if ppid in procs else 0, hops + 1
        if ppid == me:
            found.add(f"{pid}/{start}")
    return found


class CharonWatch:
    """Sees every charon that a phase of a test starts: directly (an audit hook on process
    creation) or further down (a sampler of this process's descendants, for a benchmark that
    runs the lab in a subprocess). Charons up before the phase (a lab test's session lab) are
    not its doing. Lock-free: the lab forks, and a child must not inherit a held lock."""

    INTERVAL_S = 0.5  # a sample costs ~10 ms; a lab's charon lives for seconds

    def __init__(self) -> None:
        self.watching = False
        self.before: set[str] = set()
        self.started: list[str] = []
        self.thread: threading.Thread | None = None
        sys.addaudithook(self._audit)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.watching or event not in ("subprocess.Popen", "os.exec", "os.posix_spawn"):
            return
        argv = args[1]
        argv = [argv] if isinstance(argv, str | bytes) else list(argv or ())
        exe = args[0] or (argv[0] if argv else "")
        if os.path.basename(os.fsdecode(exe)) == CHARON_NAME:
            self.started.append(" ".join(os.fsdecode(a) for a in argv))

    def _sample(self) -> None:
        for charon in charon_descendants() - self.before:
            self.before.add(charon)
            self.started.append(f"charon pid {charon.split('/')[0]}")

    def _run(self) -> None:
        while True:
            time.sleep(self.INTERVAL_S)
            if self.watching:
                self._sample()

    def begin(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="charon-watch", daemon=True)
            self.thread.start()
        self.before, self.started = charon_descendants(), []
        self.watching = True

    def end(self) -> list[str]:
        self._sample()
        self.watching = False
        return self.started


_charon_watch: CharonWatch | None = None


def _watched(item: pytest.Item, phase: str) -> Generator[None, None, None]:
    global _charon_watch
    if item.get_closest_marker("lab"):
        return (yield)
    if _charon_watch is None:
        _charon_watch = CharonWatch()
    _charon_watch.begin()
    try:
        return (yield)
    finally:
        started = _charon_watch.end()
        if started:
            pytest.fail(f"{item.nodeid} is in the {tier_of(item)} tier but its {phase} "
                        f"started charon ({'; '.join(started)}): mark it `lab`",
                        pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _watched(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _watched(item, "call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, None, None]:
    return (yield from _watched(item, "teardown"))
