"""The suite builds the data path without BTF (``datapath.btf = false``): it must be the
program that ships, instruction for instruction.

BTF is type and line information that bcc derives from the debug info; the suite turns it
off because the compile is most of its time and ``-g0`` takes ~20 % of it away. Two builds
of one configuration, with and without, must hand the kernel the same instructions: the
only difference allowed is which file descriptor a map load names (the build with BTF holds
one more fd, its BTF object), and those must name the same maps in the same places.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from controlplane.datapath import (
    PROG_CLOCK,
    PROG_INBOUND,
    PROG_OUTBOUND,
    PROG_WAN_IN,
    PROG_WAN_OUT,
    Datapath,
    DatapathConfig,
)

pytestmark = pytest.mark.bpf

PROGS = (PROG_OUTBOUND, PROG_INBOUND, PROG_WAN_OUT, PROG_WAN_IN, PROG_CLOCK)
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two slots, the first's imm the map fd
PSEUDO_MAP_KINDS = (1, 2)  # BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE: imm is a map fd


def _map_of(fd: int) -> tuple[str, ...]:
    """What the kernel says a map fd is (type, sizes, entries), from /proc/self/fdinfo."""
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        info = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    return tuple(info[k] for k in ("map_type", "key_size", "value_size", "max_entries"))


def _instructions(dp: Datapath, name: str) -> list[tuple[Any, ...]]:
    """The program's instructions as bcc hands them to the kernel, a map fd replaced by
    what the map is."""
    raw = dp.bpf.dump_func(name.encode())
    out: list[tuple[Any, ...]] = []
    i = 0
    while i < len(raw):
        insn = raw[i:i + 8]
        src = insn[1] >> 4
        if insn[0] == LD_IMM64 and src in PSEUDO_MAP_KINDS:
            fd = int.from_bytes(insn[4:8], "little")
            out.append(("map", src, insn[1] & 0xF, _map_of(fd), raw[i + 8:i + 16]))
            i += 16
            continue
        out.append(("insn", insn))
        i += 8
    return out


def test_without_btf_the_instructions_are_the_same() -> None:
    base = {"pin": False, "flows4_max": 256, "flows6_max": 64, "tunnels_max": 8}
    builds = {}
    for btf in (True, False):
        dp = Datapath(DatapathConfig(instance=f"fptest-btf{int(btf)}-{os.getpid()}",
                                     btf=btf, **base)).load()  # type: ignore[arg-type]
        try:
            builds[btf] = {p: _instructions(dp, p) for p in PROGS}
        finally:
            dp.close()
    for p in PROGS:
        with_btf, without = builds[True][p], builds[False][p]
        assert len(with_btf) == len(without), p
        assert any(kind == "map" for kind, *_ in with_btf), p
        diff = [i for i, (a, b) in enumerate(zip(with_btf, without, strict=True)) if a != b]
        assert diff == [], (p, diff[:5], [(with_btf[i], without[i]) for i in diff[:3]])
