"""Independent witnesses of flowpin's TC hooks, and another tool that removes them (the
test rig's, for the data path and lab tests in either attach mode).

clsact: ``tc`` lists the filters and deletes them. tcx: the kernel's own list of the
programs on a hook (BPF_PROG_QUERY on the interface, not flowpin's pins or link info) and
``bpftool link detach`` as the other tool.
"""

from __future__ import annotations

import json
import os
import subprocess

from controlplane import libbpf, tcx
from controlplane.datapath import HOOK_OF
from controlplane.hooks import EXPECTED
from lab import attach

HOOKS = ("ingress", "egress")


def hook_progs(ns: str, dev: str, mode: str | None = None) -> dict[str, list[str]]:
    """The names of the programs on ``dev``'s ingress and egress in ``mode`` (default: this
    suite's attach mode); tcx: in the order they run."""
    if (mode or attach.resolved()) == "clsact":
        out: dict[str, list[str]] = {}
        for hook in HOOKS:
            r = subprocess.run(["ip", "netns", "exec", ns, "tc", "filter", "show", "dev", dev,
                                hook], capture_output=True, text=True, timeout=10)
            # "... handle 0x1 fp_outbound direct-action not_in_hw id 7 name fp_outbound ..."
            words = r.stdout.split()
            out[hook] = [w for w, after in zip(words, words[1:], strict=False)
                         if after == "direct-action"]
        return out

    def query() -> dict[str, list[str]]:
        index = tcx.ifindex(dev)
        res: dict[str, list[str]] = {}
        for hook in HOOKS:
            names = []
            for pid in (libbpf.prog_query(index, tcx.HOOKS[hook]) if index else []):
                fd = libbpf.prog_fd_by_id(pid)
                try:
                    names.append(libbpf.prog_info(fd).name)
                finally:
                    os.close(fd)
            res[hook] = names
        return res

    return tcx.in_netns(ns, query)


def has(ns: str, dev: str, hook: str, prog: str) -> bool:
    return prog in hook_progs(ns, dev)[hook]


def lan_missing(ns: str, dev: str) -> list[str]:
    """The hooks of LAN interface ``dev`` that do not run flowpin's program for them
    (``controlplane.hooks.EXPECTED``), as the witness lists them (empty: both are there)."""
    on = hook_progs(ns, dev)
    return [HOOK_OF[parent] for parent, prog in EXPECTED["lan"]
            if prog not in on[HOOK_OF[parent]]]


def tcx_progs(ns: str, dev: str) -> dict[str, list[str]]:
    return hook_progs(ns, dev, "tcx")


def remove(ns: str, dev: str, hook: str | None = None) -> None:
    """Another tool removes flowpin's hook on ``dev`` (``hook`` None: both): ``tc`` deletes
    the clsact qdisc or the filter; ``bpftool`` detaches the tcx link."""
    if attach.resolved() == "clsact":
        args = (["qdisc", "del", "dev", dev, "clsact"] if hook is None
                else ["filter", "del", "dev", dev, hook])
        subprocess.run(["ip", "netns", "exec", ns, "tc", *args], check=True, timeout=10)
        return

    def prog_ids() -> set[int]:
        index = tcx.ifindex(dev)
        return {p for h in ([hook] if hook else list(HOOKS))
                for p in libbpf.prog_query(index, tcx.HOOKS[h])}

    ids = tcx.in_netns(ns, prog_ids)
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], check=True,
                                      capture_output=True, text=True, timeout=10).stdout)
    for link in links:
        if link.get("type") in (libbpf.BPF_LINK_TYPE_TCX, "tcx") and link.get("prog_id") in ids:
            subprocess.run(["bpftool", "link", "detach", "id", str(link["id"])], check=True,
                           timeout=10)
