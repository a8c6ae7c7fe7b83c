"""A separate loader process for the veth test: load (reusing pins), attach, wait.

``python -m tests.datapath.loader_proc INSTANCE NETNS IFNAME`` prints ``READY <reused>``
once attached and then sleeps; SIGTERM detaches (pins stay), SIGKILL leaves everything
attached, as a crashed control plane would.
"""

from __future__ import annotations

import signal
import sys
import time

from controlplane.datapath import Datapath, DatapathConfig
from lab import attach

# btf off: the same instructions, compiled faster (tests/datapath/test_btf.py)
VETH_CONFIG = {"flows4_max": 4096, "flows6_max": 4096, "tunnels_max": 64, "pickup_s": 0,
               "btf": False}


def main(argv: list[str]) -> int:
    instance, netns, ifname = argv
    dp = Datapath(DatapathConfig(instance=instance, attach=attach.mode(), **VETH_CONFIG)).load()  # type: ignore[arg-type]
    dp.attach(ifname, netns=netns)
    stop = False

    def _term(_sig: int, _frm: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    print(f"READY {int(dp.reused_pins)}", flush=True)
    while not stop:
        time.sleep(0.1)
    dp.detach()
    dp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
