"""A small typed binding of the libbpf functions bcc does not wrap.

bcc's Python API has no BPF_PROG_TEST_RUN, BPF_ENABLE_STATS or BPF_PROG_GET_FD_BY_ID. Rather
than issuing bpf(2) with an architecture's syscall number, this calls libbpf (libbpf1, which
bcc itself depends on), so the same code runs on every architecture Debian builds. libbpf 1.x
returns ``-errno`` and sets ``errno``; every failure here becomes an ``OSError`` that names the
call.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cache

LIBBPF = "libbpf.so.1"
BPF_STATS_RUN_TIME = 0  # enum bpf_stats_type
BPF_MAP_TYPE_ARRAY = 2  # enum bpf_map_type


class _TestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` (libbpf's bpf.h): ``sz`` first, so libbpf knows which
    fields this caller has."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBBPF, use_errno=True)
    except OSError as exc:
        raise OSError(f"{LIBBPF} is not loadable (Debian package libbpf1): {exc}") from None
    lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
    lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    lib.bpf_enable_stats.argtypes = [ctypes.c_int]
    lib.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
                                   ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
    lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_uint64]
    lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    return lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


@dataclass(frozen=True)
class RunResult:
    retval: int  # the program's return value (TC_ACT_OK = 0, TC_ACT_SHOT = 2)
    duration_ns: int  # mean ns per run, as measured by the kernel
    data_out: bytes


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1) -> RunResult:
    """Run the program ``prog_fd`` on the packet ``data`` ``repeat`` times in the kernel
    (BPF_PROG_TEST_RUN)."""
    buf_in = ctypes.create_string_buffer(data, len(data))
    buf_out = ctypes.create_string_buffer(len(data) + 256)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(buf_in),
                        data_out=ctypes.addressof(buf_out), data_size_in=len(data),
                        data_size_out=len(buf_out), repeat=repeat)
    _check(_lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return RunResult(opts.retval, opts.duration, buf_out.raw[: opts.data_size_out])


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd of the loaded program with id ``prog_id``."""
    return _check(_lib().bpf_prog_get_fd_by_id(prog_id), f"BPF_PROG_GET_FD_BY_ID {prog_id}")


def enable_run_stats() -> int:
    """Turn on the kernel's per-program run-time accounting (what
    ``kernel.bpf_stats_enabled`` does) for as long as the returned fd is open: closed, or
    the process gone, it is off again, so a killed benchmark cannot leave every BPF program
    on the machine paying for it."""
    return _check(_lib().bpf_enable_stats(BPF_STATS_RUN_TIME), "BPF_ENABLE_STATS")


def fdinfo(fd: int) -> dict[str, str]:
    """What the kernel shows of a BPF object in ``/proc/self/fdinfo/<fd>`` (map memlock,
    program id, run statistics ...), as raw strings by key."""
    info: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    return info


def array_create(name: str, value_size: int, max_entries: int = 1) -> int:
    """A new ``array`` map (u32 keys) named ``name``; returns its fd."""
    return _check(_lib().bpf_map_create(BPF_MAP_TYPE_ARRAY, name.encode(), 4, value_size,
                                        max_entries, None), f"BPF_MAP_CREATE {name}")


def array_update(fd: int, index: int, value: bytes) -> None:
    key = ctypes.c_uint32(index)
    buf = ctypes.create_string_buffer(value, len(value))
    _check(_lib().bpf_map_update_elem(fd, ctypes.byref(key), buf, 0), "BPF_MAP_UPDATE_ELEM")


def array_lookup(fd: int, index: int, value_size: int) -> bytes:
    key = ctypes.c_uint32(index)
    buf = ctypes.create_string_buffer(value_size)
    _check(_lib().bpf_map_lookup_elem(fd, ctypes.byref(key), buf), "BPF_MAP_LOOKUP_ELEM")
    return buf.raw


def obj_pin(fd: int, path: str) -> None:
    """Pin the object ``fd`` at ``path`` in bpffs."""
    _check(_lib().bpf_obj_pin(fd, os.fsencode(path)), f"BPF_OBJ_PIN {path}")


def obj_get(path: str) -> int:
    """A new fd of the object pinned at ``path``."""
    return _check(_lib().bpf_obj_get(os.fsencode(path)), f"BPF_OBJ_GET {path}")
