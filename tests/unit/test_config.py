"""Configuration: the shipped example loads; broken files name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.config import EXAMPLE, ConfigError, load, parse


def test_example_loads_with_asa_defaults() -> None:
    cfg = load(EXAMPLE)
    assert cfg.preserve_vpn_flows is False and cfg.reclassify_vpn is True
    t = cfg.timeouts
    assert (t.conn, t.half_closed, t.udp, t.embryonic, t.closed) == (3600, 600, 120, 30, 10)
    assert cfg.flow_table_size == 1 << 20
    assert cfg.nonvpn_flow_share == 50
    assert cfg.control_path == "/run/flowpin/default.sock"


def test_overrides() -> None:
    cfg = parse('[sysopt]\npreserve-vpn-flows = true\n[timeouts]\nconn = 90\n'
                '[[tunnel]]\nconn = "site"\nchild = "lan"\npreserve-vpn-flows = false\n'
                '[[tunnel]]\nconn = "other"\ninitiate-on-demand = false\n')
    assert cfg.timeouts.conn == 90
    assert parse("[datapath]\nnonvpn-flow-share = 100\n").nonvpn_flow_share == 100
    assert parse("").attach == "auto"
    assert parse('[datapath]\nattach = "clsact"\n').attach == "clsact"
    assert cfg.preserve_for("site", "lan") is False
    assert cfg.preserve_for("site", "voice") is True
    assert cfg.initiate_for("other", "x") is False and cfg.initiate_for("site", "lan") is True


# (file text, line, key, words in the message)
BROKEN = [
    ("[sysopt]\npreserve-vpn-flows = yes\n", 2, "sysopt.preserve-vpn-flows", "not valid TOML"),
    ("[sysopt]\nreclassify-vpn = \"on\"\n", 2, "sysopt.reclassify-vpn", "true or false"),
    ("[timeouts]\nconn = \"1:00:00\"\nudp = \"two minutes\"\n", 3, "timeouts.udp", "h:mm:ss"),
    ("[sysopt]\npreserve-vpn-flow = true\n", 2, "sysopt.preserve-vpn-flow", "unknown key"),
    ("[bogus]\nx = 1\n", 1, "bogus", "unknown section"),
    ("[datapath]\nflow-table-size = 3\n", 2, "datapath.flow-table-size", "integer"),
    ("[datapath]\nnonvpn-flow-share = 0\n", 2, "datapath.nonvpn-flow-share", "1 to 100"),
    ('[datapath]\nattach = "xdp"\n', 2, "datapath.attach", "auto, tcx, clsact"),
    ("[sysopt\npreserve-vpn-flows = true\n", 1, "", "not valid TOML"),
    ("[[tunnel]]\nconn = \"a\"\n[[tunnel]]\nchild = \"b\"\nfoo = 1\n", 5, "tunnel[1].foo",
     "unknown key"),
    ("[logging]\nlevel = \"loud\"\n", 2, "logging.level", "one of"),
    ("[demand]\nbackoff-min = 60\nbackoff-max = 10\n", 2, "demand.backoff-min", "larger"),
    # Wrong types where a table is expected: named, never an AttributeError.
    ("[sysopt]\npreserve-vpn-flows = true\n\ntunnel = [1]\n", 4, "sysopt.tunnel",
     "unknown key"),
    ("tunnel = [1]\n[sysopt]\npreserve-vpn-flows = true\n", 1, "tunnel[0]", "must be a table"),
    ("tunnel = [{conn = \"a\"}, \"b\"]\n", 1, "tunnel[1]", "must be a table"),
    ("tunnel = 1\n", 1, "tunnel", "[[tunnel]]"),
    ("[tunnel]\nconn = \"a\"\n", 1, "tunnel", "[[tunnel]]"),
    ("sysopt = 1\n", 1, "sysopt", "must be a table"),
    ("[[sysopt]]\npreserve-vpn-flows = true\n", 1, "sysopt", "must be a table"),
    ("[[tunnel]]\nconn = [\"a\"]\n", 2, "tunnel[0].conn", "must be a string"),
    # Instance names name a directory: never "." or ".." (the bpffs root), nor a path.
    ("[datapath]\ninstance = \".\"\n", 2, "datapath.instance", "starting with a letter"),
    ("[datapath]\ninstance = \"..\"\n", 2, "datapath.instance", "starting with a letter"),
    ("[datapath]\ninstance = \"a/b\"\n", 2, "datapath.instance", "letters, digits"),
    ("[datapath]\ninstance = \"../x\"\n", 2, "datapath.instance", "letters, digits"),
]


@pytest.mark.parametrize(("text", "line", "key", "words"), BROKEN,
                         ids=[b[2] or "syntax" for b in BROKEN])
def test_broken_file_names_file_line_key(tmp_path: Path, text: str, line: int, key: str,
                                          words: str) -> None:
    f = tmp_path / "flowpin.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(f)
    assert err.value.line == line and err.value.key == key
    assert str(err.value).startswith(f"{f}:{line}: ")
    assert words in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.toml")


@pytest.mark.parametrize("name", [".", "..", "a/b", "../x", "", "-x"])
def test_instance_names_that_are_not_a_directory_of_their_own(name: str) -> None:
    """The pin directory is /sys/fs/bpf/flowpin/<instance>: "." and ".." would make it
    the bpffs root or flowpin's parent of every instance, and --purge would empty it."""
    from controlplane.datapath import DatapathConfig, DatapathError, purge_pins

    with pytest.raises(ValueError, match="instance name"):
        DatapathConfig(instance=name)
    with pytest.raises(DatapathError, match="refusing to purge"):
        purge_pins(name)


# `flowpin daemon --check-config FILE` (the unit's ExecStartPre): exit code and what it says.
CHECKS = [
    ('[datapath]\nlan-interfaces = ["eth1"]\n', 0, "is valid"),
    ('[datapath]\nlan-interfaces = ["eth1"]\nflow-table-size = 3\n', 1,
     ":3: datapath.flow-table-size: must be an integer"),
    # Valid TOML a daemon still cannot run with: named at the key's own line.
    ('[sysopt]\npreserve-vpn-flows = true\n[datapath]\nlan-interfaces = []\n', 1,
     ":4: datapath.lan-interfaces: name at least one LAN interface"),
    ('[sysopt]\npreserve-vpn-flows = yes\n', 1, ":2: sysopt.preserve-vpn-flows: not valid TOML"),
    ('[metrics]\nlisten = "9477"\n[datapath]\nlan-interfaces = ["eth1"]\n', 0, "is valid"),
    ('[metrics]\nlisten = "localhost"\n', 1, ":2: metrics.listen: must be"),
]


@pytest.mark.parametrize(("text", "code", "words"), CHECKS)
def test_check_config(tmp_path: Path, text: str, code: int, words: str) -> None:
    import subprocess
    import sys

    f = tmp_path / "flowpin.toml"
    f.write_text(text)
    r = subprocess.run([sys.executable, "-m", "controlplane.cli", "daemon", "--check-config",
                        "--config", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == code, r.stdout + r.stderr
    out = r.stdout if code == 0 else r.stderr
    assert (f"{f}{words}" if words.startswith(":") else words) in out, out
    assert "Traceback" not in r.stderr


def test_metrics_listen_without_host_is_loopback() -> None:
    from controlplane.metrics import parse_listen

    assert parse_listen("9477") == ("127.0.0.1", 9477)
    assert parse_listen(":9477") == ("127.0.0.1", 9477)
    assert parse_listen("0.0.0.0:9477") == ("0.0.0.0", 9477)
    assert parse_listen("[::1]:9477") == ("::1", 9477)
