"""Helpers for the deployment tests: the vagrant/ directory, a PATH of shims.

CI cannot boot VMs. These tests prove what can be proven without them: the Vagrantfile
validates, the systemd units verify, the provisioning and the check print what they would do
(and run nothing), and the files provisioning writes for each gateway bring a tunnel up
between two real charons of the lab, with flowpin running on that configuration.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"

# What a dry run may really execute (read-only helpers); everything else that changes a
# system is a shim that records its call and fails.
ALLOWED = ("dirname", "cat", "sed", "id", "uname", "grep")
FORBIDDEN = ("apt-get", "apt-cache", "systemctl", "install", "rsync", "ln", "mkdir", "sysctl",
             "ip", "env", "mount", "chmod", "mv", "cp", "rm", "nft", "swanctl", "flowpin",
             "curl", "vagrant", "ssh", "sudo", "python3", "python", "modprobe", "tee",
             "setup.sh", "dpkg", "reboot", "sh", "bash")


def require_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is missing (Debian package {package}): run `make setup` as root",
                    pytrace=False)
    return path


def shim_path(tmp: Path) -> tuple[str, Path]:
    """A PATH with only ALLOWED tools and failing shims; the shims log to the returned file."""
    bindir = tmp / "bin"
    bindir.mkdir()
    log = tmp / "executed.log"
    for tool in ALLOWED:
        real = shutil.which(tool)
        assert real, tool
        (bindir / tool).symlink_to(real)
    for tool in FORBIDDEN:
        shim = bindir / tool
        shim.write_text(f"#!{shutil.which('bash')}\necho \"{tool} $*\" >> {log}\n"
                        f"echo 'shim: {tool} must not run in a dry run' >&2\nexit 99\n")
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return str(bindir), log


def dry_env(bindir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TERM")}
    env["PATH"] = bindir
    return env
