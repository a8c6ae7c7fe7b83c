"""The files provisioning writes for each gateway, proven on the lab's real charons.

The lab is built *without* its connection (``Lab.up(load_conns=False)``) and with the charon
timers a deployed gateway gets. For each gateway, ``lab.deploy`` renders its files
(as provisioning does on the VM, with the lab's paths for the sockets and NIC); then:

- swanctl, an independent witness standing in for strongswan.service's
  ``swanctl --load-all``, loads the rendered swanctl.conf into that gateway's charon over VICI;
- the lab's flowpin daemon is restarted on the rendered flowpin.toml.

The tunnel must then come up (CHILD_SA INSTALLED on both charons) and both daemons must see
it UP with preserve-vpn-flows on. Then ``vagrant/check`` itself runs on that lab, through a
fake ``vagrant ssh`` (:mod:`tests.deploy.fake_vagrant`), and must say PASS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import config
from lab import deploy
from lab.topology import CHILD, CONN, GATEWAYS, LAN_IF
from tests.conftest import lab_up
from tests.deploy import fake_vagrant
from tests.deploy.conftest import VAGRANT_DIR
from vici_glue import session as vs

pytestmark = pytest.mark.lab
PSK = "deploy-test-psk-0123456789"


@pytest.fixture(scope="module")
def lab() -> Iterator[object]:
    if not shutil.which("swanctl"):
        pytest.fail("swanctl is missing (Debian package strongswan-swanctl): run `make setup`",
                    pytrace=False)
    with lab_up("dep", load_conns=False, preserve=False,
                charon_options=deploy.CHARON_TIMERS) as lb:
        yield lb


def _render(lab, gw: str, out: Path) -> Path:  # noqa: ANN001
    d = out / gw
    deploy.render(gw, d, psk=PSK, lan_if=LAN_IF, vici_socket=lab.charon(gw).vici_path,
                  instance=lab.instance(gw), control_socket=lab.daemon_socket(gw))
    return d


@pytest.fixture(scope="module")
def deployed(lab, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """The lab's gateways running the rendered files; returns the lab and swanctl's output."""
    out = tmp_path_factory.mktemp("deploy")
    for gw in GATEWAYS:
        with lab.vici(gw) as s:  # nothing loaded by the lab
            assert CONN not in vs.decode(dict(s.get_conns())).get("conns", [])
    loaded = {}
    for gw in ("ho-gw", "bo-gw"):  # the responder first; bo-gw starts the tunnel on load
        d = _render(lab, gw, out)
        cfg = config.load(d / deploy.FLOWPIN_FILE)
        assert cfg.preserve_vpn_flows and cfg.lan_interfaces == (LAN_IF,)
        lab.kill_daemon(gw, 15)
        shutil.copy(d / deploy.FLOWPIN_FILE, lab.daemon_config(gw))
        lab.start_daemon(gw)
        loaded[gw] = subprocess.run(
            ["swanctl", "--load-all", "--noprompt", "--uri", f"unix://{lab.charon(gw).vici_path}",
             "--file", str(d / deploy.SWANCTL_FILE)],
            env=dict(os.environ, SWANCTL_DIR=str(d / "swanctl")), capture_output=True,
            text=True, timeout=30)
    lab.bring_up("bo-gw", timeout=30)  # returns once both are INSTALLED and flowpin saw it
    return lab, loaded


def test_rendered_files_bring_the_tunnel_up(deployed) -> None:  # noqa: ANN001
    lab, loaded = deployed
    for r in loaded.values():
        assert r.returncode == 0, r.stdout + r.stderr
        assert "loaded connection 'site'" in r.stdout and "loaded ike secret" in r.stdout
    for gw in GATEWAYS:
        (child,) = lab.child_installed(gw)
        assert child["name"] == CHILD and child["state"] == "INSTALLED"
        assert lab.ask(gw, "show-sysopt")["preserve_vpn_flows"] is True
        assert lab.ask(gw, "show-sysopt")["config"] == str(lab.daemon_config(gw))
        ctx = lab.ask(gw, "show-vpn-context")
        assert [t["state"] for t in ctx["tunnels"]] == ["UP"], ctx
    with lab.vici("bo-gw") as s:  # the rendered connection is the one charon runs
        conn = vs.decode(dict(next(iter(s.list_conns()))))[CONN]
    assert conn["local_addrs"] == ["192.0.2.1"] and conn["remote_addrs"] == ["192.0.2.2"]
    assert conn["dpd_delay"] == "2" and conn["local-1"]["id"] == "bo-gw"
    assert conn["children"][CHILD]["local-ts"] == ["10.1.0.0/24", "fd01::/64"]
    assert conn["children"][CHILD]["remote-ts"] == ["10.2.0.0/24", "fd02::/64"]


def test_check_passes_on_the_lab(deployed) -> None:  # noqa: ANN001
    # vagrant/check, unchanged, with `vagrant ssh` landing on the lab's nodes: a 2 MB
    # download at 256 kB/s, the WAN of bo-gw cut until DPD takes the tunnel down and 2 s more.
    lab, _ = deployed
    bindir = fake_vagrant.install(lab)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    r = subprocess.run(["/bin/bash", str(VAGRANT_DIR / "check"), "--size", "2", "--rate", "256k",
                        "--hold", "2"], env=env, capture_output=True, text=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "check: PASS: the download survived" in out, out
    assert "tunnel down after" in out and "in cleartext during the outage: 0" in out
