"""Acceptance: the branch-office download survives a tunnel outage with preserve-vpn-flows
on and is torn down with it off -- asserted on the bytes and the sha256, not on text."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.demo import run_story
from tests.conftest import require_lab_prerequisites

pytestmark = pytest.mark.lab


def test_demo_verdicts(tmp_path: Path) -> None:
    require_lab_prerequisites()
    off, on = run_story(size_mib=6, outage=12, how="dpd", duration=16, out_dir=tmp_path,
                        name="e2es", progress=False)
    assert not off.preserve and on.preserve
    # preserve-vpn-flows on: every byte, the right bytes.
    assert on.completed, on.as_dict()
    assert on.received == on.size and on.sha_ok
    assert on.pinned.get("bo-gw", 0) >= 1 and on.pinned.get("ho-gw", 0) >= 1
    assert on.resume_delay is not None
    # off: torn down, the download never completes, and 302014 says why.
    assert not off.completed and off.received < off.size
    assert off.teardowns and off.teardowns[-1].endswith("Tunnel has been torn down")
    assert off.pinned.get("bo-gw", 0) == 0


def test_ipv6_download_survives(tmp_path: Path) -> None:
    require_lab_prerequisites()
    (on,) = run_story(size_mib=4, outage=8, how="dpd", duration=12, out_dir=tmp_path,
                      name="e2e6", progress=False, host="fd02::10", modes=(True,))
    assert on.completed and on.sha_ok, on.as_dict()


def test_one_sided_deployment(tmp_path: Path) -> None:
    """flowpin on bo-gw only; ho-gw is plain strongSwan: our side alone preserves."""
    require_lab_prerequisites()
    (on,) = run_story(size_mib=4, outage=8, how="dpd", duration=12, out_dir=tmp_path,
                      name="e2ep", progress=False, modes=(True,), peer="plain")
    assert on.completed and on.sha_ok, on.as_dict()
    assert "ho-gw" not in on.pinned
