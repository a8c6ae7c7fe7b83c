"""Every strongSwan plugin the lab's charons load comes from a Debian package setup installs.

Read from the machine itself, without root: dpkg's file lists say which package installed
each plugin's ``.so``. A plugin with no ``.so`` counts only if it is built into
libstrongswan or libcharon (its ``<name>_plugin_create`` is in the library): charon skips
a listed plugin it cannot find without a word, which is how a missing package used to show
up only as NO_PROPOSAL_CHOSEN.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.backend import KERNEL_LIBIPSEC, KERNEL_NETLINK
from lab.charon import plugins
from lab.preflight import PLUGIN_PACKAGES

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
LIBRARIES = (Path("/usr/lib/ipsec/libstrongswan.so.0"), Path("/usr/lib/ipsec/libcharon.so.0"))
DPKG_INFO = Path("/var/lib/dpkg/info")


def setup_packages() -> set[str]:
    """The packages scripts/setup.sh installs: scripts/debian-packages.txt, which it reads."""
    text = (REPO / "scripts/debian-packages.txt").read_text()
    return {word for line in text.splitlines() for word in line.split("#")[0].split()}


def owners() -> dict[str, str]:
    """Installed file -> the package that installed it, from dpkg's lists."""
    out: dict[str, str] = {}
    for lst in DPKG_INFO.glob("*.list"):
        pkg = lst.stem.split(":")[0]  # libfoo:amd64.list for Multi-Arch packages
        for line in lst.read_text(errors="replace").splitlines():
            out[line] = pkg
    return out


def plugin_source(name: str, files: dict[str, str]) -> tuple[str, str]:
    """(package, how it was found) for one plugin; ('', why not) if it comes from none."""
    so = PLUGIN_DIR / f"libstrongswan-{name}.so"
    if so.exists():
        return files.get(str(so), ""), str(so)
    symbol = f"{name.replace('-', '_')}_plugin_create".encode() + b"\0"
    for lib in LIBRARIES:
        if lib.exists() and symbol in lib.read_bytes():
            return files.get(str(lib), ""), f"built into {lib}"
    return "", f"neither {so} nor built into libstrongswan/libcharon"


def lab_plugins() -> list[str]:
    return sorted(set(plugins(KERNEL_LIBIPSEC)) | set(plugins(KERNEL_NETLINK)))


def test_setup_reads_the_package_file() -> None:
    """setup.sh installs the file's packages (not a list of its own that could drift)."""
    script = (REPO / "scripts/setup.sh").read_text()
    assert "scripts/debian-packages.txt" in script
    assert "strongswan" not in script.replace("strongSwan", ""), \
        "a package named in setup.sh itself: list it in scripts/debian-packages.txt"


def test_every_lab_plugin_comes_from_a_package_setup_installs() -> None:
    if not PLUGIN_DIR.is_dir():
        pytest.fail(f"{PLUGIN_DIR} is missing: strongSwan is not installed (run `make setup` "
                    "as root)", pytrace=False)
    files = owners()
    wanted = setup_packages()
    problems = []
    for name in lab_plugins():
        pkg, where = plugin_source(name, files)
        if not pkg:
            problems.append(f"{name}: {where} (charon would skip it silently)")
        elif pkg not in wanted:
            problems.append(f"{name}: from {pkg} ({where}), which scripts/debian-packages.txt "
                            "does not list")
    assert not problems, "; ".join(problems)


def test_the_preflight_names_the_right_package_for_each_plugin() -> None:
    """The table the lab's missing-plugin errors quote is what dpkg says, for every plugin
    in it, and it covers every plugin the lab loads."""
    files = owners()
    wrong = {name: (pkg, plugin_source(name, files)) for name, pkg in PLUGIN_PACKAGES.items()
             if plugin_source(name, files)[0] != pkg}
    assert not wrong, f"preflight.PLUGIN_PACKAGES disagrees with dpkg: {wrong}"
    assert not set(lab_plugins()) - set(PLUGIN_PACKAGES)
