"""The man page and the bash completion are the parser's (scripts/gen-cli-docs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_man_page_and_completion_are_generated_from_the_parser() -> None:
    r = subprocess.run([sys.executable, "scripts/gen-cli-docs.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_they_name_every_product_command() -> None:
    man = (ROOT / "docs/man/flowpin.8").read_text()
    bash = (ROOT / "docs/man/flowpin.bash").read_text()
    for cmd in ("daemon", "status", "show", "sysopt", "clear", "reload"):
        assert f"'flowpin {cmd}'" in man
        assert f"'{cmd}'" in bash
    for rig in ("lab", "bench", "demo"):  # not on a gateway
        assert f"'flowpin {rig}'" not in man
