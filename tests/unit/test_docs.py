"""The docs point at what exists: every relative link resolves (file and heading), and the
map of folders in docs/design.md is the tree's."""

from __future__ import annotations

import fnmatch
import re
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


def tree_folders() -> set[str]:
    """The tree's top-level folders, as a clone has them: not hidden, not generated (what
    .gitignore names). Read from the file system: a copy without git (make fresh-check's
    chroot) has the same tree."""
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    return {p.name for p in ROOT.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in ignored
            and not any(fnmatch.fnmatch(p.name, pat) for pat in ignored)}


def test_design_maps_every_top_level_folder() -> None:
    folders = tree_folders() - {"docs"}  # the map lives there
    table = (ROOT / "docs/design.md").read_text().split("## Where things live", 1)[1]
    mapped = set(re.findall(r"^\| `([\w.-]+)/` \|", table, flags=re.M))
    assert mapped == folders


def test_resume_tables_are_the_generated_ones() -> None:
    """performance.md's resume tables are `flowpin bench resume --table FILE`'s output for
    the result file the paragraph above each links: no figure copied or edited by hand."""
    from bench.resume import table

    text = (ROOT / "docs" / "performance.md").read_text()
    header = "| case | outage | kick on: resume | kicks | kick off (stock TCP) |"
    checked = 0
    for block in text.split("\n\n"):
        if not block.startswith(header):
            continue
        before = text[:text.index(block)]
        linked = re.findall(r"\]\((perf/resume[^)]*\.json)\)", before)[-1]
        assert block.strip() == table([str(ROOT / "docs" / linked)]), linked
        checked += 1
    assert checked >= 3
