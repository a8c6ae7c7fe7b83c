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
