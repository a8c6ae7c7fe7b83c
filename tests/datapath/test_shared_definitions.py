"""C and Python agree on every shared struct and constant.

Layouts come from bcc's ctypes and constants from the header, so there is one definition;
these tests prove that what Python sees is what the C compiled (sizes are
_Static_assert'ed in the C against the same FP_SIZEOF_* numbers), and that the verdict
order rule Python uses is the one the program applies.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from controlplane import flow_table as ft
from controlplane.datapath import bpf_source
from controlplane.sweeper import _VALUE

pytestmark = pytest.mark.bpf


def test_ctypes_layouts_match_the_c_sizes(dp: Any) -> None:
    b, c = dp.bpf, ft.CONST
    assert ctypes.sizeof(b[b"flows4"].Key) == c["FP_SIZEOF_FLOW_KEY4"]
    assert ctypes.sizeof(b[b"flows6"].Key) == c["FP_SIZEOF_FLOW_KEY6"]
    assert ctypes.sizeof(b[b"flows4"].Leaf) == c["FP_SIZEOF_FLOW_VALUE"]
    assert ctypes.sizeof(b[b"flows6"].Leaf) == c["FP_SIZEOF_FLOW_VALUE"]
    assert ctypes.sizeof(b[b"tunnels"].Leaf) == c["FP_SIZEOF_TUNNEL"]
    assert ctypes.sizeof(b[b"tunnel_stats"].Leaf) == c["FP_SIZEOF_TUNNEL_STATS"]
    assert ctypes.sizeof(b[b"config"].Leaf) == c["FP_SIZEOF_CONFIG"]
    assert ctypes.sizeof(b[b"selectors4"].Leaf) == c["FP_SIZEOF_SEL_VALUE4"]
    assert ctypes.sizeof(b[b"selectors6"].Leaf) == c["FP_SIZEOF_SEL_VALUE6"]
    assert ctypes.sizeof(b[b"guard_stats"].Leaf) == c["FP_SIZEOF_GUARD_STATS"]
    assert ft._GUARD_STATS.size == c["FP_SIZEOF_GUARD_STATS"]
    assert ctypes.sizeof(b[b"event_layout"].Leaf) == c["FP_SIZEOF_EVENT"]


def test_sweeper_struct_format_matches_flow_value(dp: Any) -> None:
    """The sweeper unpacks flow_value with struct for speed: a mirrored layout, so check
    every field offset against bcc's ctypes."""
    leaf = dp.bpf[b"flows4"].Leaf
    assert _VALUE.size == ctypes.sizeof(leaf)
    names = [f[0] for f in leaf._fields_]
    assert names == ["generation", "tunnel_id", "side", "seq", "ack", "created_s", "last_s",
                     "acct"]
    v = leaf(generation=1, tunnel_id=2, created_s=9, last_s=10)
    v.side[0], v.side[1], v.seq[0], v.seq[1], v.ack[0], v.ack[1] = 3, 4, 5, 6, 7, 8
    v.acct[0], v.acct[1] = 11, 12
    assert _VALUE.unpack(bytes(v)) == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)


@pytest.mark.parametrize("map_name, mirror, fields", [
    ("tunnels", "TUNNEL_WORD", ["generation", "state", "flags", "pad"]),
    ("tunnel_stats", "_TUNNEL_STATS", ["held", "refused", "last_demand_ns", "last_full_ns"]),
    ("guard_stats", "_GUARD_STATS", ["out_dropped", "in_dropped", "last_out_ns",
                                     "last_in_ns"]),
])
def test_struct_mirrors_match_the_c(dp: Any, map_name: str, mirror: str,
                                    fields: list[str]) -> None:
    """The batch readers unpack these values with ``struct`` (no ctypes object per entry):
    every field, in order, must land where the C puts it."""
    leaf = dp.bpf[map_name.encode()].Leaf
    assert [f[0] for f in leaf._fields_] == fields
    v = leaf(**{name: i + 1 for i, name in enumerate(fields)})
    fmt = getattr(ft, mirror)
    assert fmt.size == ctypes.sizeof(leaf)
    assert fmt.unpack(bytes(v)) == tuple(range(1, len(fields) + 1))


def test_key_proto_offsets(dp: Any) -> None:
    from controlplane.sweeper import _KEY_PROTO_OFFSET

    assert _KEY_PROTO_OFFSET[4] == dp.bpf[b"flows4"].Key.proto.offset
    assert _KEY_PROTO_OFFSET[6] == dp.bpf[b"flows6"].Key.proto.offset


def test_enums_parsed_from_the_header() -> None:
    assert ft.Reason.PASS_FLOW == 0
    assert len(ft.Reason) == ft.REASON_MAX
    assert [r.value for r in ft.Reason] == list(range(ft.REASON_MAX))
    assert min(s.value for s in ft.Stat) == ft.REASON_MAX
    assert ft.EventType.DEMAND and ft.EventType.MAP_FULL and ft.EventType.FLOW_REMOVED
    passes = [r for r in ft.Reason if r.name.startswith("PASS_")]
    assert all(ft.reason_passes(r) for r in passes)
    assert not any(ft.reason_passes(r) for r in ft.Reason if r.name.startswith("DROP_"))


def test_header_compiles_with_its_own_defaults() -> None:
    """Without -D overrides the header's defaults and _Static_asserts still compile."""
    import bcc

    src = bpf_source().replace("BPF_RINGBUF_OUTPUT(events, 64);", "BPF_RINGBUF_OUTPUT(events, 1);")
    b = bcc.BPF(text=src.replace("FP_FLOWS4_MAX, 0)", "1024, 0)").encode())
    assert b[b"flows6"].max_entries == ft.CONST["FP_FLOWS6_MAX"]
    b.cleanup()


def test_a_counters_pin_of_an_older_build_is_replaced() -> None:
    """Pins outlive upgrades: a counters map with fewer slots than this build counts is
    dropped at load (every other pinned map is reused), and every reason reads."""
    import ctypes
    import os

    from bcc.libbcc import lib

    from controlplane.datapath import Datapath, DatapathConfig, check_layout, purge_pins
    from controlplane.flow_table import STAT_MAX

    instance = f"fptest-pins{os.getpid()}"
    cfg = DatapathConfig(instance=instance, flows4_max=64, flows6_max=64, tunnels_max=8)
    try:
        check_layout(cfg.pin_dir)  # pins of this layout: only the counters' size differs
        lib.bcc_create_map.argtypes = [ctypes.c_int, ctypes.c_char_p] + [ctypes.c_int] * 4
        lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
        percpu_array = 6
        fd = lib.bcc_create_map(percpu_array, b"counters", 4, 8, STAT_MAX - 1, 0)
        assert fd >= 0
        assert lib.bpf_obj_pin(fd, os.fsencode(cfg.pin_dir / "counters")) == 0
        os.close(fd)
        dp = Datapath(cfg).load()
        try:
            counters = dp.table.counters()
            assert counters["NONVPN_UNTRACKED"] == 0 and len(counters) == STAT_MAX
        finally:
            dp.close()
    finally:
        purge_pins(instance)
