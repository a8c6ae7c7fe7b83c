"""The command line without a daemon: parsing, filters, errors, version."""

from __future__ import annotations

import subprocess
import sys

import pytest

from controlplane import cli


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return cli.parser(with_rig=False).parse_args(list(argv))


def test_asa_keywords_and_options_give_the_same_filters() -> None:
    asa = cli.conn_filters(parse("show", "conn", "address", "10.1.0.10", "port", "443",
                                 "protocol", "tcp"))
    opts = cli.conn_filters(parse("show", "conn", "--address", "10.1.0.10", "--port", "443",
                                  "--protocol", "tcp"))
    assert asa == opts == {"address": "10.1.0.10", "port": 443, "protocol": "tcp",
                           "tunnel": None}
    assert cli.conn_filters(parse("clear", "conn", "tunnel", "site/lan"))["tunnel"] == "site/lan"


@pytest.mark.parametrize(("terms", "says"), [
    (["addr", "10.1.0.10"], "unknown filter 'addr'"),
    (["port"], "filter 'port' needs a value"),
    (["port", "http"], "port 'http' is not a number"),
    (["port", "70000"], "out of range"),
    (["protocol", "sctp"], "protocol 'sctp' is not one of"),
])
def test_bad_filters_are_one_clear_error(terms: list[str], says: str) -> None:
    with pytest.raises(cli.CliError, match=says):
        cli.conn_filters(parse("clear", "conn", *terms))


def test_instance_names_the_socket() -> None:
    assert cli.control_socket(parse("status", "--instance", "gw2")) == "/run/flowpin/gw2.sock"
    assert cli.control_socket(parse("status", "--socket", "/tmp/x.sock")) == "/tmp/x.sock"
    with pytest.raises(SystemExit):
        parse("status", "--instance", "a", "--socket", "/tmp/x")


def test_version_and_a_missing_daemon_are_one_line_each() -> None:
    r = subprocess.run([sys.executable, "-m", "controlplane.cli", "--version"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("flowpin ")
    r = subprocess.run([sys.executable, "-m", "controlplane.cli", "status", "--socket",
                        "/nonexistent/flowpin.sock"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("flowpin: error:") and r.stderr.count("\n") == 1


def _conn(port: int) -> dict[str, object]:
    return {"protocol": "TCP", "tunnel": "site/lan",
            "outside": {"address": "10.2.0.10", "port": 80},
            "inside": {"address": "10.1.0.10", "port": port}, "idle_s": 3, "bytes": 100,
            "flags": "UIO", "stale": False}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_show_conn_prints_rows_as_the_daemon_streams_them(tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                          as_json: bool) -> None:
    """Rows as they come, the count line last; --json is one valid object all the same."""
    import json

    from controlplane.control import ControlServer, Stream

    asked: list[object] = []

    def submit(cmd: str, args: dict[str, object]) -> object:
        asked.append((cmd, args.get("limit")))
        return Stream({}, iter([_conn(40000), _conn(40001)]),
                      lambda: {"in_use": 7, "shown": 2, "limited": True})

    srv = ControlServer(str(tmp_path / "c.sock"), submit).start()
    try:
        argv = ["show", "conn", "--socket", srv.path, "--limit", "2"] + (
            ["--json"] if as_json else [])
        assert cli.main(argv) == 0
    finally:
        srv.stop()
    out = capsys.readouterr().out
    assert asked == [("show-conn", 2)]
    if as_json:
        data = json.loads(out)
        assert data["in_use"] == 7 and [c["inside"]["port"] for c in data["connections"]] \
            == [40000, 40001]
    else:
        lines = out.splitlines()
        assert lines[0].startswith("TCP site/lan 10.2.0.10:80 inside 10.1.0.10:40000")
        assert lines[-1] == "7 in use, 2 shown (limit reached: more match; see --limit)"
