"""What a build holds: the gateway's (FLOWPIN_BUILD=gateway, as debian/rules builds) the
product only, without the rig's packages and subcommands; the default build everything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PRODUCT = {"controlplane", "vici_glue", "flowpin_bpf"}


def _wheel(tmp_path: Path, build: str | None) -> zipfile.ZipFile:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv*", ".git", "out", "build", "*.egg-info", "__pycache__", ".pytest_cache",
        "tests", "docs", "vagrant"))
    env = dict(os.environ)
    env.pop("FLOWPIN_BUILD", None)
    if build:
        env["FLOWPIN_BUILD"] = build
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir",
                        "--no-build-isolation", "-w", str(tmp_path / "whl"), str(src)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return zipfile.ZipFile(next((tmp_path / "whl").glob("flowpin-*.whl")))


def _contents(whl: zipfile.ZipFile) -> tuple[set[str], str]:
    tops = {n.split("/")[0] for n in whl.namelist() if not n.split("/")[0].endswith(
        ".dist-info")}
    eps = next(n for n in whl.namelist() if n.endswith("entry_points.txt"))
    return tops, whl.read(eps).decode()


@pytest.mark.parametrize("build,packages,subcommands", [
    ("gateway", PRODUCT, False),
    (None, PRODUCT | {"lab", "bench"}, True),
])
def test_what_a_build_holds(tmp_path: Path, build: str | None, packages: set[str],
                            subcommands: bool) -> None:
    tops, eps = _contents(_wheel(tmp_path, build))
    assert tops == packages
    assert "flowpin = controlplane.cli:main" in eps
    assert ("[flowpin.subcommands]" in eps) is subcommands, eps
