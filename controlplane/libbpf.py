"""A small typed binding of the libbpf functions bcc does not wrap.

bcc's Python API has no BPF_PROG_TEST_RUN, BPF_ENABLE_STATS, BPF_PROG_GET_FD_BY_ID nor BPF
links (tcx attachment: create, update, pin, query, detach). Rather
than issuing bpf(2) with an architecture's syscall number, this calls libbpf (libbpf1, which
bcc itself depends on), so the same code runs on every architecture Debian builds. libbpf 1.x
returns ``-errno`` and sets ``errno``; every failure here becomes an ``OSError`` that names the
call.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from functools import cache

LIBBPF = "libbpf.so.1"
BPF_STATS_RUN_TIME = 0  # enum bpf_stats_type
BPF_MAP_TYPE_ARRAY = 2  # enum bpf_map_type
# enum bpf_attach_type, linux/bpf.h (uapi) of Linux 6.6, where tcx came in. Debian 12's libbpf
# 1.1 predates them: its bpf_link_create passes an attach type it does not know to the kernel
# as is (with zeroed options, which is all a tcx link appended last needs).
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_LINK_TYPE_TCX = 11  # enum bpf_link_type (uapi, 6.6)
BPF_F_REPLACE = 1 << 2  # linux/bpf.h: link update only if the link still runs old_prog_fd


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


class _LinkUpdateOpts(ctypes.Structure):
    """``struct bpf_link_update_opts`` of libbpf 1.1 (later versions append fields; ``sz``
    tells libbpf this caller has only these)."""

    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32),
                ("old_prog_fd", ctypes.c_uint32)]


class _ProgQueryOpts(ctypes.Structure):
    """``struct bpf_prog_query_opts`` of libbpf 1.1."""

    _fields_ = [("sz", ctypes.c_size_t), ("query_flags", ctypes.c_uint32),
                ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.POINTER(ctypes.c_uint32)), ("prog_cnt", ctypes.c_uint32),
                ("prog_attach_flags", ctypes.POINTER(ctypes.c_uint32))]


class _LinkInfo(ctypes.Structure):
    """``struct bpf_link_info`` (uapi): type, id, prog_id, then a union 8-byte aligned
    whose tcx member is (ifindex, attach_type). 64 bytes leave room for the union's largest
    members, which the kernel fills for other link types."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("_rest", ctypes.c_uint8 * 40)]


class _ProgInfo(ctypes.Structure):
    """The head of ``struct bpf_prog_info`` (uapi): type, id, tag[8]. The kernel fills what
    fits in the length it is given."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", ctypes.c_uint32),
                ("xlated_prog_len", ctypes.c_uint32), ("jited_prog_insns", ctypes.c_uint64),
                ("xlated_prog_insns", ctypes.c_uint64), ("load_time", ctypes.c_uint64),
                ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16)]


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
    lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.bpf_link_update.argtypes = [ctypes.c_int, ctypes.c_int,
                                    ctypes.POINTER(_LinkUpdateOpts)]
    lib.bpf_link_detach.argtypes = [ctypes.c_int]
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p,
                                           ctypes.POINTER(ctypes.c_uint32)]
    lib.bpf_prog_query_opts.argtypes = [ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(_ProgQueryOpts)]
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


# -- BPF links (tcx) ----------------------------------------------------------------------
def link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """Attach ``prog_fd`` to the interface ``ifindex`` (of the calling thread's network
    namespace) as a new link of ``attach_type`` (BPF_TCX_INGRESS/EGRESS: appended after the
    programs already there); returns the link's fd. The link lives as long as an fd or a
    pin holds it."""
    return _check(_lib().bpf_link_create(prog_fd, ifindex, attach_type, None),
                  f"BPF_LINK_CREATE type {attach_type} on ifindex {ifindex}")


def link_update(link_fd: int, new_prog_fd: int, old_prog_fd: int | None = None) -> None:
    """Make the link run ``new_prog_fd`` instead of its program, in one step (no packet
    sees neither). With ``old_prog_fd``, only if the link still runs that program
    (BPF_F_REPLACE; EPERM otherwise): another loader that replaced it in between wins."""
    opts = _LinkUpdateOpts(sz=ctypes.sizeof(_LinkUpdateOpts))
    if old_prog_fd is not None:
        opts.flags = BPF_F_REPLACE
        opts.old_prog_fd = old_prog_fd
    _check(_lib().bpf_link_update(link_fd, new_prog_fd, ctypes.byref(opts)),
           "BPF_LINK_UPDATE")


def link_detach(link_fd: int) -> None:
    """Detach the link from its hook now, whoever else holds it (pins, other fds): it stays
    an object, defunct, until its last reference goes."""
    _check(_lib().bpf_link_detach(link_fd), "BPF_LINK_DETACH")


@dataclass(frozen=True)
class LinkInfo:
    type: int  # enum bpf_link_type (BPF_LINK_TYPE_TCX)
    id: int
    prog_id: int  # the program it runs
    ifindex: int  # tcx: its interface; 0 once defunct (interface gone, or detached)
    attach_type: int  # tcx: BPF_TCX_INGRESS / BPF_TCX_EGRESS

    @property
    def defunct(self) -> bool:
        """A tcx link no longer on any interface: it filters nothing."""
        return self.ifindex == 0


def link_info(link_fd: int) -> LinkInfo:
    """What the kernel says of the link ``link_fd`` (BPF_OBJ_GET_INFO_BY_FD)."""
    info = _LinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(link_fd, ctypes.byref(info), ctypes.byref(size)),
           "BPF_OBJ_GET_INFO_BY_FD (link)")
    return LinkInfo(info.type, info.id, info.prog_id, info.ifindex, info.attach_type)


@dataclass(frozen=True)
class ProgInfo:
    id: int
    tag: bytes  # the kernel's hash of the program's instructions
    name: str  # the first 15 characters of its function name


def prog_info(prog_fd: int) -> ProgInfo:
    """Id, tag and name of the program ``prog_fd``."""
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size)),
           "BPF_OBJ_GET_INFO_BY_FD (prog)")
    return ProgInfo(info.id, bytes(info.tag), info.name.decode(errors="replace"))


def prog_query(ifindex: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """The ids of the programs on the hook ``attach_type`` of ``ifindex``, in the order
    they run (BPF_PROG_QUERY). Raises OSError(EINVAL) where the kernel has no such hook
    (tcx before Linux 6.6)."""
    ids = (ctypes.c_uint32 * max_progs)()
    opts = _ProgQueryOpts(sz=ctypes.sizeof(_ProgQueryOpts), prog_ids=ids, prog_cnt=max_progs)
    _check(_lib().bpf_prog_query_opts(ifindex, attach_type, ctypes.byref(opts)),
           f"BPF_PROG_QUERY type {attach_type} on ifindex {ifindex}")
    return list(ids[: opts.prog_cnt])


def has_tcx() -> bool:
    """Whether the running kernel has tcx (BPF links on the TC hooks, Linux 6.6+): a query
    of the loopback device's tcx ingress answers there and fails with EINVAL before.
    Attaches nothing."""
    try:
        prog_query(1, BPF_TCX_INGRESS)  # ifindex 1: lo, in every network namespace
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    return True
