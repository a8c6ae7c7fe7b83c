"""`vagrant/check --dry-run` prints the preserve story's commands and runs none."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.deploy.conftest import VAGRANT_DIR, dry_env, shim_path


def test_check_dry_run(tmp_path: Path) -> None:
    bindir, log = shim_path(tmp_path)  # vagrant, ssh, nft … are failing shims
    r = subprocess.run(["/bin/bash", str(VAGRANT_DIR / "check"), "--dry-run"],
                       env=dry_env(bindir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    out = r.stdout
    assert r.returncode == 0, out
    assert not log.exists(), f"dry run executed: {log.read_text()}"
    steps = [
        "+ [bo-gw] systemctl is-active strongswan.service flowpin.service",
        "+ [bo-gw] flowpin show sysopt",
        "+ [ho-gw] flowpin show sysopt",
        "head -c 16M /dev/urandom > /tmp/flowpin-check/blob-",
        "+ [ho-server] sha256sum /tmp/flowpin-check/blob-",
        "python3 -m http.server 8080 --bind 10.2.0.10",
        "+ [bo-client] [ -f /tmp/flowpin-check.curl.pid ]",
        "curl -sS --limit-rate 256k",
        "nft -f -",
        'oifname "$wan" drop',
        "rt ipsec missing counter",
        "+ [bo-gw] nft delete table inet flowpin_check",
        "+ [bo-client] sha256sum /tmp/flowpin-check/blob",
        "check: dry run: no verdict",
    ]
    pos = 0
    for step in steps:  # all there, in this order
        found = out.find(step, pos)
        assert found >= 0, f"missing (or out of order): {step}\n{out}"
        pos = found
    # The outage is bracketed by tunnel checks (DPD down, then back).
    assert out.count("swanctl --list-sas --ike site") >= 3


def test_check_options(tmp_path: Path) -> None:
    bindir, _ = shim_path(tmp_path)
    r = subprocess.run(["/bin/bash", str(VAGRANT_DIR / "check"), "--dry-run", "--size", "4",
                        "--rate", "128k"], env=dry_env(bindir), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "head -c 4M" in r.stderr and "--limit-rate 128k" in r.stderr
    r = subprocess.run(["/bin/bash", str(VAGRANT_DIR / "check"), "--rate", "fast"],
                       env=dry_env(bindir), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
