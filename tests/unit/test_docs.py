"""The docs point at what exists: every relative link resolves (file and heading), and the
map of folders in docs/design.md is the tree's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    fence = False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def test_every_relative_link_resolves() -> None:
    broken = []
    for md in DOCS:
        for target in LINK.findall(md.read_text()):
            if re.match(r"^[a-z]+:", target):  # http:, https:, file:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("# Title\n[a](x.md#title) [b](missing.md) [c](x.md#nothing)\n")
    links = LINK.findall(md.read_text())
    assert [t for t in links if not (tmp_path / t.partition("#")[0]).exists()] == ["missing.md"]
    assert "title" in anchors(md) and "nothing" not in anchors(md)


def test_design_maps_every_top_level_folder() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    folders = {p.split("/")[0] for p in tracked if "/" in p and not p.startswith(".")}
    folders -= {"docs"}  # the map lives there
    table = (ROOT / "docs/design.md").read_text().split("## Where things live", 1)[1]
    mapped = set(re.findall(r"^\| `([\w.-]+)/` \|", table, flags=re.M))
    assert mapped == folders
