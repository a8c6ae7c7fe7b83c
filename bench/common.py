"""Helpers shared by the side-by-side benchmarks: summaries, alternation, the machine."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def summary(values: Sequence[float], ndigits: int = 3) -> dict[str, Any]:
    """Median and min-max of the rounds, plus every round, so noise shows."""
    v = [float(x) for x in values]
    if not v:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": round(statistics.median(v), ndigits), "min": round(min(v), ndigits),
            "max": round(max(v), ndigits), "runs": [round(x, ndigits) for x in v]}


def ratio(a: float | None, b: float | None, ndigits: int = 3) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, ndigits)


def alternate(contenders: Sequence[str], rounds: int,
              run: Callable[[str, int], float],
              counterbalance: bool = False) -> dict[str, list[float]]:
    """Run ``run(contender, round)`` as A B C A B C ... for ``rounds`` rounds; with
    ``counterbalance``, every other round is reversed (A B B A A B ...), so that a drift
    of the machine or an effect of going first does not favour one contender."""
    out: dict[str, list[float]] = {c: [] for c in contenders}
    for r in range(rounds):
        order = contenders[::-1] if counterbalance and r % 2 else contenders
        for c in order:
            out[c].append(run(c, r))
    return out


def alternate_slices(seconds: float, slice_s: float, start_on: bool,
                     read: Callable[[], int], switch: Callable[[bool], None],
                     alive: Callable[[], None]) -> list[tuple[bool, float]]:
    """Within one running load: the contender switched on and off (``switch``) every
    ``slice_s`` for ``seconds`` (4 slices at least: a pair whichever state goes first), a
    counter of the load's progress (``read``) read at each switch; ``alive`` raises if the
    load ended. Returns (contender on, counter's rate per second) per slice; the switches
    fall between two reads, in no slice. The contender is off again on return."""
    on = False
    slices: list[tuple[bool, float]] = []
    try:
        if start_on:
            switch(True)
            on = True
        for i in range(max(4, round(seconds / slice_s))):
            if i:
                switch(not on)
                on = not on
            t0, n0 = time.monotonic(), read()
            time.sleep(slice_s)
            t1, n1 = time.monotonic(), read()
            alive()
            slices.append((on, (n1 - n0) / (t1 - t0)))
    finally:
        if on:
            switch(False)
    return slices


def bracketed(slices: list[tuple[bool, float]]) -> list[float]:
    """Each contender slice of an alternation (``(True, rate)``; ``(False, rate)`` the
    reference's) against the mean of the reference slices on either side of it: what
    changes more slowly than a slice (the host's load, the VM's clock, its neighbours)
    cancels out of each ratio."""
    out = []
    for i in range(1, len(slices) - 1):
        on, rate = slices[i]
        (b_on, before), (a_on, after) = slices[i - 1], slices[i + 1]
        if on and not b_on and not a_on and before + after > 0:
            out.append(rate / ((before + after) / 2))
    return out


def median_ci95(values: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """Median of ``values`` and a 95 % bootstrap interval of it (percentiles of the medians
    of ``resamples`` resamples; a fixed seed, so a results file reproduces its own)."""
    import random

    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(values, k=len(values)))
                  for _ in range(resamples))
    return (statistics.median(values), meds[int(0.025 * resamples)],
            meds[int(0.975 * resamples) - 1])


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def ipsec_backend() -> str:
    """The IPsec backend strongSwan gets on this kernel (probed as `flowpin lab up` does):
    kernel-netlink (ESP in the kernel's XFRM) or kernel-libipsec (ESP in user space)."""
    from lab import backend

    try:
        return backend.probe()[0]
    except (OSError, RuntimeError) as exc:  # not root, no netns: say so, do not guess
        return f"unknown ({exc})"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    flags: set[str] = set()
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name") and not cpu:
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    mem_kib = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    iperf = ""
    if shutil.which("iperf3"):
        try:
            iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True,
                                   timeout=5).stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            iperf = ""
    os_name = ""
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "virtualized": "hypervisor" in flags,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": os_name,
        "srso_mitigation": _read("/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow"),
        "python": sys.version.split()[0],
        "iperf3": iperf,
        "ipsec_backend": ipsec_backend(),
    }


def print_result(run: Callable[[], dict[str, Any]]) -> int:
    """Run a benchmark and print its one JSON object; an interruption or a failure is a
    JSON object too (``{"error": …, "at": file:line}``), with exit status 130 or 1."""
    from controlplane.interrupt import unwind_on_signals

    unwind_on_signals()
    try:
        out = run()
    except KeyboardInterrupt:
        print(json.dumps({"error": "interrupted"}))
        return 130
    except Exception as exc:  # noqa: BLE001 -- reported, as JSON, with where it failed
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                          "at": f"{where.filename}:{where.lineno}"}))
        return 1
    print(json.dumps(out, indent=2 if sys.stdout.isatty() else None))
    return 0


# route_to_nowhere: the sender's address, and a gateway whose MAC nobody owns.
NOWHERE_SRC, NOWHERE_GW, NOWHERE_GW_MAC = "10.95.0.1", "10.95.0.2", "02:00:5e:00:00:02"


def route_to_nowhere(net: str, veth: str) -> None:
    """In the current (benchmark) namespace: ``net`` routed out of a new veth pair
    ``{veth}0``/``{veth}1`` to a gateway whose MAC nobody owns, so the peer drops the frames
    (other host), nothing answers and nothing comes back; unreplied UDP conntrack entries
    kept 10 minutes (longer than any benchmark). For filling conntrack with entries."""
    from pyroute2 import IPRoute

    Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").write_text("600")
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("add", ifname=f"{veth}0", kind="veth", peer=f"{veth}1")
        idx = ipr.link_lookup(ifname=f"{veth}0")[0]
        ipr.link("set", index=ipr.link_lookup(ifname=f"{veth}1")[0], state="up")
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address=NOWHERE_SRC, prefixlen=24)
        ipr.neigh("add", dst=NOWHERE_GW, lladdr=NOWHERE_GW_MAC, ifindex=idx,
                  state=0x80)  # NUD_PERMANENT
        addr, plen = net.split("/")
        ipr.route("add", dst=addr, dst_len=int(plen), gateway=NOWHERE_GW)
