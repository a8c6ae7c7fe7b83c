"""The benchmarks' handles on loaded programs: the kernel's per-program run-time accounting
is on while the fd from BPF_ENABLE_STATS is open, counting runs of a real program, and off
once it is closed (so a killed benchmark cannot leave it on for every BPF program of the
machine); a program is reopened by id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench.forward import prog_run_stats
from controlplane.datapath import PROG_OUTBOUND
from controlplane.libbpf import enable_run_stats, fdinfo, prog_fd_by_id, prog_test_run
from lab import packets as tr
from tests.datapath.cases import NET4

pytestmark = pytest.mark.bpf
SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def test_run_stats_count_while_the_fd_is_open(dp: Any) -> None:
    assert SYSCTL.read_text().strip() == "0", "another process has run statistics on"
    fd = dp.prog_fd(PROG_OUTBOUND)
    pkt = tr.udp(NET4.c, NET4.s, 40000, 53)
    stats = enable_run_stats()
    try:
        t0, n0 = prog_run_stats(fd)
        prog_test_run(fd, pkt, repeat=1000)
        t1, n1 = prog_run_stats(fd)
    finally:
        os.close(stats)
    assert SYSCTL.read_text().strip() == "0"
    assert n1 - n0 == 1000 and t1 > t0
    # off: runs are no longer accounted
    prog_test_run(fd, pkt, repeat=1000)
    assert prog_run_stats(fd) == (t1, n1)


def test_prog_fd_by_id_reopens_a_loaded_program(dp: Any) -> None:
    fd = dp.prog_fd(PROG_OUTBOUND)
    again = prog_fd_by_id(int(fdinfo(fd)["prog_id"]))
    try:
        assert prog_test_run(again, tr.udp(NET4.c, NET4.s, 40001, 53)).retval == 0
    finally:
        os.close(again)
    with pytest.raises(OSError, match="BPF_PROG_GET_FD_BY_ID"):
        prog_fd_by_id(0x7FFFFFFF)
