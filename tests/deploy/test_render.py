"""`python -m lab.deploy`: the files of each node, and its addressing script run in
a network namespace shaped like the VM (NICs with other names, found by their address)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import config
from lab import deploy
from lab.lab import PSK, conn_for
from lab.topology import GATEWAYS, NODES


def test_gateway_files(tmp_path: Path) -> None:
    deploy.render("bo-gw", tmp_path, psk="s3cret psk", lan_if="enp0s8")
    swan = tmp_path / deploy.SWANCTL_FILE
    assert stat.S_IMODE(swan.stat().st_mode) == 0o600  # holds the key
    text = swan.read_text()
    assert 'secret = "s3cret psk"' in text and "id-1 = bo-gw" in text
    assert "start_action = start" in text  # the branch office brings the tunnel up at boot
    cfg = config.load(tmp_path / deploy.FLOWPIN_FILE)
    assert cfg.preserve_vpn_flows and cfg.lan_interfaces == ("enp0s8",)
    assert cfg.vici_socket == "/var/run/charon.vici"
    assert "load = no" in (tmp_path / deploy.STRONGSWAN_FILE).read_text()
    assert "net.ipv4.ip_forward = 1" in (tmp_path / deploy.SYSCTL_FILE).read_text()


def test_swanctl_tree_is_the_vici_message() -> None:
    # ho-gw keeps the lab's connection unchanged: the rendered tree is conn_message().
    text = deploy.swanctl_text("ho-gw", PSK)
    assert text == conn_for("ho-gw").swanctl_conf()
    for line in ("local_addrs = 192.0.2.2", "remote_ts = 10.1.0.0/24, fd01::/64",
                 "dpd_action = clear", "esp_proposals = aes256gcm16, aes256-sha256, default"):
        assert line in text


def test_psk_encoding() -> None:
    from vici_glue.conns import _swanctl_secret

    assert _swanctl_secret("plain key") == '"plain key"'
    assert _swanctl_secret('with"quote') == "0x" + b'with"quote'.hex()
    assert _swanctl_secret("0xcafe") == "0x" + b"0xcafe".hex()  # not taken as hex


def test_cli_needs_a_psk_and_finds_no_lan_nic_here(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != deploy.PSK_ENV}
    run = [sys.executable, "-m", "lab.deploy", "render", "--node", "bo-gw",
           "--out", str(tmp_path), "--lan-if", "lan0"]
    r = subprocess.run(run, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "pre-shared key" in r.stderr
    env[deploy.PSK_ENV] = "k"
    r = subprocess.run(run[:-2], env=env, capture_output=True, text=True)  # --lan-if auto
    assert r.returncode == 1 and "no interface carries 10.1.0.1" in r.stderr
    r = subprocess.run(run, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / deploy.FLOWPIN_FILE).exists()


def test_host_needs_only_the_standard_library(tmp_path: Path) -> None:
    # bo-client and ho-server have no venv: Debian's python3 without site packages renders.
    r = subprocess.run(["/usr/bin/python3", "-S", "-m", "lab.deploy", "render",
                        "--node", "ho-server", "--out", str(tmp_path)],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["net.sh"]


def _ns(name: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", name, *argv], check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.bpf  # root (network namespaces), no charon
@pytest.mark.parametrize("node", NODES)
def test_net_script_in_a_namespace(tmp_path: Path, node: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("root is needed (network namespaces)", pytrace=False)
    script = tmp_path / "net.sh"
    script.write_text(deploy.net_text(node))
    ns = f"fpdep-{os.getpid() % 10000}-{NODES.index(node)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        # NICs (veth: this kernel has no dummy) named as a provider would, with the IPv4 address
        # Vagrant gives them.
        for i, nic in enumerate(deploy.nics(node)):
            dev = f"enp0s{8 + i}"
            _ns(ns, "ip", "link", "add", dev, "type", "veth", "peer", "name", f"peer{i}")
            _ns(ns, "ip", "link", "set", f"peer{i}", "up")
            _ns(ns, "ip", "addr", "add", nic.addrs[0], "dev", dev)
        for _ in range(2):  # idempotent: boot after provisioning runs it again
            _ns(ns, "sh", str(script))
        addrs = _ns(ns, "ip", "-o", "addr", "show")
        for i, nic in enumerate(deploy.nics(node)):
            for a in nic.addrs:
                assert f"enp0s{8 + i}" in addrs and a in addrs, (a, addrs)
        routes = _ns(ns, "ip", "-4", "route") + _ns(ns, "ip", "-6", "route")
        for prefix, via in deploy.routes(node):
            assert f"{prefix} via {via}" in routes, (prefix, routes)
        far = "10.2.0.0/24" if node in ("bo-client", "bo-gw") else "10.1.0.0/24"
        assert far in routes
        if node in GATEWAYS:
            assert "192.0.2" in addrs
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
