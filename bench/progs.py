"""The benchmarks' own TC programs (``bench/bpf/``): never part of a gateway's data path.

``empty.c`` is the baseline every per-packet cost is measured against, ``floor.c`` the least
any TC flow table does per packet, ``calibrate.c`` the kernel's own preallocated-hash insert
on this CPU. They share the data path's headers (``lib/flow_types.h``) through
:func:`controlplane.datapath.bpf_source`.
"""

from __future__ import annotations

from typing import Any

import bcc

from controlplane.datapath import bpf_source

PACKAGE = "bench"


def source(name: str) -> str:
    """The C of ``bench/bpf/<name>``, includes expanded."""
    return bpf_source(f"bpf/{name}", package=PACKAGE)


def compile_bench_prog(name: str, func: str) -> tuple[Any, int]:
    """A benchmark-only SCHED_CLS program from ``bench/bpf/<name>``: (BPF object, fd)."""
    b = bcc.BPF(text=source(name).encode())
    return b, b.load_func(func.encode(), bcc.BPF.SCHED_CLS).fd


def compile_empty() -> tuple[Any, int]:
    """The empty SCHED_CLS program (benchmark baseline): (BPF object, program fd)."""
    return compile_bench_prog("empty.c", "fp_empty")
