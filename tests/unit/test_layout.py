"""The house as drawn from its imports.

The product (``controlplane``, ``vici_glue``) is what a gateway installs; the lab, the demo,
the benchmarks and the tests are its test rig. Arrows go from the rig to the product, never
back, and the product has no import cycles. Read from the source (every ``import``, also the
lazy ones inside functions), so nothing has to run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("controlplane", "vici_glue")
RIG = ("lab", "bench", "tests")
ALL = PRODUCT + RIG


def modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    """Every project module ``path`` imports (absolute and relative), lazily or not."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in ALL}


def graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    mods: dict[str, Path] = {}
    for pkg in packages:
        mods.update(modules(pkg))
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        # "from controlplane import show" names a module; "from x import Class" its module
        edges[name] = {m if m in mods else m.rpartition(".")[0] for m in imports(path, name)}
        edges[name] = {m for m in edges[name] if m in mods and m != name}
    return edges


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_imports_nothing_of_the_rig(package: str) -> None:
    arrows = [f"{name} -> {dep}" for name, path in modules(package).items()
              for dep in sorted(imports(path, name)) if dep.split(".")[0] in RIG]
    assert arrows == []


def test_the_product_has_no_import_cycles() -> None:
    edges = graph(PRODUCT)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert [" -> ".join(c) for c in cycles] == []


def test_the_graph_sees_arrows() -> None:
    """The checks above would pass on a graph that found nothing: this one proves it finds
    the arrows that are there (the daemon uses the data path; the lab starts the daemon)."""
    product = graph(PRODUCT)
    assert "controlplane.datapath" in product["controlplane.daemon"]
    rig = graph(ALL)
    assert any(dep.startswith("controlplane") for dep in rig["lab.lab"])
    assert any(dep.startswith("controlplane") for dep in rig["bench.progs"])
