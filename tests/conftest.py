"""Shared test prerequisites and lab fixtures.

Tests that need root, bpf, namespaces or charon *fail* with a message naming what is
missing (CI is root and installs everything through `make setup`); they never skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

_counter = itertools.count()


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


@pytest.fixture(scope="module")
def lab() -> Iterator[object]:
    """A lab that is up for the whole module, and always removed afterwards."""
    require_lab_prerequisites()
    from lab.lab import Lab

    lb = Lab(unique_lab_name("t"))
    lb.up()
    try:
        yield lb
    finally:
        lb.down()
