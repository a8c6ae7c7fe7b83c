"""The test tiers hold (tests/conftest.py): a test marked other than its directory says is
refused, a directory marks its tests, and a test that is not marked `lab` but starts charon
fails -- whether it starts it itself, in a fixture, or through a child process.

Each case runs in a pytest of its own over a small tree of tests, with the hooks of the real
conftest. The charon they start is `sleep` under a name that the watch of those runs is told
to look for: the watch looks at process names only, a real charon would need root (which
this tier does not have), and the watch of this run must not take the stand-in for a charon.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

STAND_IN = "charon-standin"  # the name the watch of the inner runs looks for
CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

# The real conftest's hooks, loaded under another name: the tree has a tests/ of its own.
HOOKS = f"""
import importlib.util

_spec = importlib.util.spec_from_file_location("tiers_under_test", {str(CONFTEST)!r})
_m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_m)
globals().update({{k: v for k, v in vars(_m).items() if k.startswith("pytest_")}})
"""

INI = """
[pytest]
addopts = --strict-markers -p no:cacheprovider
markers =
    lab: starts charons
    bpf: root, no charon
"""


@pytest.fixture
def tree(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makeconftest(HOOKS)
    # Plain folders (no __init__.py), and test files named apart: the tree's modules must
    # not be taken for this suite's own package `tests` when collected in this process.
    for d in ("unit", "datapath", "lab", "other"):
        (pytester.path / "tests" / d).mkdir(parents=True)
    return pytester


def write(tree: pytest.Pytester, path: str, body: str) -> None:
    (tree.path / path).write_text("import pytest\n\n" + body)


def test_a_test_marked_against_its_directory_is_refused(tree: pytest.Pytester) -> None:
    write(tree, "tests/unit/test_u.py",
          "@pytest.mark.bpf\ndef test_needs_root():\n    pass\n")
    write(tree, "tests/other/test_o.py",
          "@pytest.mark.lab\n@pytest.mark.bpf\ndef test_both():\n    pass\n")
    result = tree.runpytest_subprocess("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines_random([
        "*tests/unit/test_u.py::test_needs_root: marked bpf, but tests/unit holds the unit tier",
        "*tests/other/test_o.py::test_both: marked lab and bpf; a test has one tier",
    ])


def test_a_directory_marks_its_tests(tree: pytest.Pytester) -> None:
    for d in ("unit", "datapath", "lab", "other"):
        write(tree, f"tests/{d}/test_in_{d}.py", "def test_it():\n    pass\n")
    items, _ = tree.inline_genitems()  # collection only: nothing runs, in this process
    tiers = {item.nodeid.split("/")[1]: [m.name for m in item.iter_markers()] for item in items}
    assert tiers == {"unit": [], "datapath": ["bpf"], "lab": ["lab"], "other": []}


def test_starting_charon_outside_the_lab_tier_fails(tree: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPIN_TEST_CHARON_NAME", STAND_IN)
    charon = tree.path / "bin" / STAND_IN
    charon.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", charon)
    write(tree, "tests/other/test_c.py", f"""
import subprocess

CHARON = {str(charon)!r}


def run_charon():
    subprocess.run([CHARON, "0.1"], check=True)


@pytest.fixture(scope="session")
def session_charon():
    p = subprocess.Popen([CHARON, "30"])
    yield
    p.kill()
    p.wait()


@pytest.fixture
def charon_fixture():
    run_charon()


def test_direct():
    run_charon()


@pytest.mark.bpf
def test_direct_bpf():
    run_charon()


def test_in_a_fixture(charon_fixture):
    pass


def test_in_a_grandchild():
    # sh forks it (the `; true` keeps sh from exec'ing it): only the process tree shows it.
    subprocess.run(["sh", "-c", CHARON + " 1.5; true"], check=True)


@pytest.mark.lab
def test_lab_may(session_charon):
    run_charon()


def test_a_charon_up_before_the_test_is_not_its_doing(session_charon):
    pass
""")
    result = tree.runpytest_subprocess()
    result.assert_outcomes(passed=2, failed=3, errors=1)
    result.stdout.fnmatch_lines_random([
        "*test_direct is in the unit tier but its call started charon*mark it `lab`*",
        "*test_direct_bpf is in the bpf tier but its call started charon*",
        "*test_in_a_fixture is in the unit tier but its setup started charon*",
        "*test_in_a_grandchild is in the unit tier but its call started charon (charon pid*",
    ])
