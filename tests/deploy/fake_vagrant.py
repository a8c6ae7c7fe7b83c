"""A stand-in for `vagrant ssh NODE --no-tty -c CMD` that runs CMD on the lab node instead of a VM.

It lets the tests run the real ``vagrant/check`` (quoting, polling, nftables outage, verdict)
against the lab's namespaces, real charons and flowpin daemons. Each node gets its own
``/tmp`` (a VM has its own file system); on gateways ``swanctl`` talks to the node's charon
and ``flowpin`` to its daemon; ``sudo`` runs the command; ``systemctl is-active`` answers
"active" (the lab's charons and daemons are not systemd services, the test checks them
itself). Everything lives in the lab's state directory and goes with ``lab down``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BASH = "/bin/bash"


def install(lab: Any) -> Path:
    """Write the fake ``vagrant`` and its helpers; return the directory to put first in PATH."""
    root = lab.state_dir / "fake-vagrant"
    bindir, helpers, tmps = root / "bin", root / "helpers", root / "tmp"
    for d in (bindir, helpers, tmps):
        d.mkdir(parents=True, exist_ok=True)
    prefix = lab.ns("bo-client")[: -len("bo-client")]
    import controlplane

    project = Path(controlplane.__file__).parent.parent
    keep = " ".join(sorted({str(p) for p in (Path(sys.prefix), project)
                            if Path("/tmp") in p.parents}))
    scripts = {
        bindir / "vagrant": f"""#!{BASH}
# vagrant ssh NODE --no-tty -c CMD [-- ssh options]: CMD in NODE's lab namespace, own /tmp.
[ "$1" = ssh ] && [ "$3" = --no-tty ] && [ "$4" = -c ] ||
    {{ echo "fake vagrant: only ssh NODE --no-tty -c CMD: $*" >&2; exit 99; }}
node=$2 cmd=$5
case "$node" in bo-gw|ho-gw) state={lab.state_dir}/$node ;; bo-client|ho-server) state= ;;
    *) echo "fake vagrant: no node $node" >&2; exit 99 ;; esac
mkdir -p {tmps}/$node
exec ip netns exec {prefix}$node unshare -m {BASH} -c '
# The node gets its own /tmp; what must stay visible (this checkout and its venv, when they
# live under /tmp, as a CI clone may) is bound back into it first.
for keep in {keep}; do
    mkdir -p "$1/${{keep#/tmp/}}" && mount --bind "$keep" "$1/${{keep#/tmp/}}" || exit 98
done
mount --rbind "$1" /tmp || exit 98
export PATH="$2:$PATH" FPSTATE="$3" FLOWPIN_SOCKET="$3/flowpin.sock"
exec {BASH} -c "$4"' fake-vagrant "{tmps}/$node" "{helpers}" "$state" "$cmd"
""",
        helpers / "sudo": f'#!{BASH}\nexec "$@"\n',
        helpers / "systemctl": f'#!{BASH}\n[ "$1" = is-active ] || exit 99\n'
                               'shift; for u; do echo active; done\n',
        helpers / "swanctl": f'#!{BASH}\nexec /usr/sbin/swanctl "$@" '
                             '--uri "unix://$FPSTATE/charon.vici"\n',
        helpers / "flowpin": f'#!{BASH}\nexec {Path(sys.executable).with_name("flowpin")} "$@"\n',
    }
    for path, text in scripts.items():
        path.write_text(text)
        path.chmod(0o755)
    return bindir
