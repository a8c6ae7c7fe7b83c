"""The rendered /etc/strongswan.d/flowpin.conf, read by a real charon the way Debian's
strongswan.conf reads it on the VMs (``load_modular`` with strongswan.d/charon/*.conf, then
strongswan.d/*.conf in name order): it parses, and charon loads kernel-netlink (the kernel's
XFRM IPsec), not kernel-libipsec, even though that plugin is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab import deploy, netns
from lab.charon import binary
from vici_glue import session as vs

pytestmark = pytest.mark.lab
ETC = Path("/etc/strongswan.d")


def test_charon_loads_kernel_netlink(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("root is needed (namespaces, charon)", pytrace=False)
    if not (ETC / "charon" / "kernel-libipsec.conf").exists():
        pytest.fail("strongSwan's plugin configuration is missing (Debian packages "
                    "strongswan-charon, libcharon-extra-plugins): run `make setup`",
                    pytrace=False)
    # /etc/strongswan.d as on a provisioned gateway: Debian's files plus ours.
    deploy.render("ho-gw", tmp_path / "etc", psk="unused", lan_if="eth1")
    sdir = tmp_path / "strongswan.d"
    sdir.mkdir()
    for f in ETC.glob("*.conf"):
        shutil.copy(f, sdir)
    shutil.copy(tmp_path / "etc" / deploy.STRONGSWAN_FILE, sdir)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "strongswan.conf").write_text(  # Debian's /etc/strongswan.conf, paths moved
        "charon {\n    load_modular = yes\n    plugins {\n"
        f"        include {ETC}/charon/*.conf\n    }}\n}}\ninclude {sdir}/*.conf\n")
    ns = f"fpsw{os.getpid() % 100000}"
    netns.create(ns)
    proc = None
    try:
        proc = subprocess.Popen([binary()], env={"STRONGSWAN_CONF": "/run/strongswan.conf",
                                                 "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / "charon.err", "wb"),  # noqa: SIM115
                                preexec_fn=netns.preexec(ns, run_dir))
        sock = run_dir / "charon.vici"
        deadline = time.monotonic() + 15
        while not sock.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "charon.err").read_text()
            time.sleep(0.05)
        s = vs.connect(str(sock), 5)
        stats = vs.decode(dict(s.stats()))
        s.transport.close()
        plugins = stats["plugins"]
        assert "kernel-netlink" in plugins, plugins
        assert "kernel-libipsec" not in plugins, plugins
        assert {"vici", "openssl", "socket-default"} <= set(plugins), plugins
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        netns.kill_all(ns)
        netns.remove(ns)
