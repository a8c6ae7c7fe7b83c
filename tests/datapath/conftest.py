"""Fixtures of the data path tests: prerequisites, a compiled data path, a clean state.

Missing prerequisites (root, bcc, bpffs, kernel headers for bcc, pyroute2) make the tests
FAIL with a message naming what is missing; they never skip.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator

import pytest

from lab import attach
from tests.datapath.cases import BASE_CLOCK_S, reset_state


def missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (loading eBPF programs, network namespaces)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        missing.append("bcc for Python (Debian package python3-bpfcc, venv with "
                       "--system-site-packages)")
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        missing.append("pyroute2 (pip)")
    build = f"/lib/modules/{platform.release()}/build"
    if not os.path.isdir(build):
        missing.append(f"kernel headers for bcc at {build} (make setup maps Debian's "
                       "linux-headers there)")
    if not os.path.isdir("/sys/fs/bpf"):
        missing.append("bpffs mount point /sys/fs/bpf")
    return missing


def require_prerequisites() -> None:
    missing = missing_prerequisites()
    if missing:
        pytest.fail("data path prerequisites missing: " + "; ".join(missing)
                    + " -- run `make setup` as root", pytrace=False)


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    require_prerequisites()


def make_datapath(**kw: object) -> object:
    from controlplane.datapath import Datapath, DatapathConfig

    cfg = DatapathConfig(**{"instance": "fptest-dp", "pin": False, "flows4_max": 4096,
                            "flows6_max": 4096, "tunnels_max": 64, "pickup_s": 0,
                            "event_interval_ms": 1000, "attach": attach.mode(),
                            "btf": False, **kw})  # type: ignore[arg-type]
    return Datapath(cfg).load()


@pytest.fixture(scope="session")
def datapath() -> Iterator[object]:
    """One compiled, unpinned data path for the whole session (compiling costs ~2 s)."""
    require_prerequisites()
    dp = make_datapath()
    yield dp
    dp.close()  # type: ignore[attr-defined]


@pytest.fixture
def dp(datapath: object) -> object:
    """The session data path with a clean state: no flows, tunnel 1 UP and PRESERVE,
    the standard selectors, counters zero, the clock at BASE_CLOCK_S, no pickup."""
    reset_state(datapath.table)  # type: ignore[attr-defined]
    datapath.table.set_clock(BASE_CLOCK_S * 10**9)  # type: ignore[attr-defined]
    return datapath
