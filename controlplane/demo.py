"""``flowpin demo``: bring the lab up, show the tunnel and traffic crossing it, tear down.

The lab is always removed at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from controlplane.lab import topology
from controlplane.lab.capture import WanCapture
from controlplane.lab.lab import Lab
from controlplane.lab.traffic import Transfer


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run(a: argparse.Namespace) -> int:
    lab = Lab(a.name)
    if lab.exists():
        lab.down()
    from controlplane.cli import _lab_status_text

    t0 = time.monotonic()
    try:
        _step("lab up: four namespaces, a charon on each gateway, IKEv2 over the WAN")
        lab.up()
        print(_lab_status_text(lab.status()))
        ok = True
        with WanCapture(lab, topology.BO_GW) as cap:
            for addr in topology.HOST_ADDR[topology.SERVER]:
                _step(f"ping bo-client -> ho-server {addr}")
                r = lab.exec(topology.CLIENT, ["ping", "-c", "3", "-i", "0.2", "-W", "2", addr],
                             stdout=subprocess.PIPE, text=True)
                print(r.stdout.strip().splitlines()[-2] if r.stdout else "(no output)")
                ok &= r.returncode == 0
                _step(f"TCP transfer of 8 MiB bo-client -> ho-server {addr}")
                tr = Transfer(lab, addr, 8 << 20, port=5001)
                sent, got = tr.wait()
                same = sent.get("sha256") == got.get("sha256") and sent["bytes"] == got["bytes"]
                print(f"sent {sent['bytes']} bytes, received {got['bytes']} bytes in "
                      f"{got.get('seconds', 0)} s, sha256 {'matches' if same else 'DIFFERS'}")
                ok &= same
        s = cap.summary
        _step("what crossed the WAN (captured on bo-gw wan0)")
        print(f"ESP packets: {s.esp}, IKE: {s.counts['ike']}, cleartext LAN packets: "
              f"{len(s.leaks)}")
        ok &= s.esp > 0 and not s.leaks
        _step(f"result: {'tunnel up, traffic crossed it encrypted' if ok else 'FAILED'} "
              f"({time.monotonic() - t0:.1f} s)")
        return 0 if ok else 1
    finally:
        _step("lab down")
        lab.down()
        print("removed")
