"""C and Python agree on every shared struct and constant.

Layouts come from bcc's ctypes and constants from the header, so there is one definition;
these tests prove that what Python sees is what the C compiled (sizes are
_Static_assert'ed in the C against the same FP_SIZEOF_* numbers), and that the verdict
order rule Python uses is the one the program applies.
"""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import controlplane
from controlplane import flow_types as ft
from controlplane.datapath import bpf_source
from controlplane.layout import layout
from controlplane.sweeper import FLOW_VALUE_SCALARS, Sweeper

pytestmark = pytest.mark.bpf


def test_ctypes_layouts_match_the_c_sizes(dp: Any) -> None:
    b, c = dp.bpf, ft.CONST
    assert ctypes.sizeof(b[b"fp_flows4"].Key) == c["FP_SIZEOF_FLOW_KEY4"]
    assert ctypes.sizeof(b[b"fp_flows6"].Key) == c["FP_SIZEOF_FLOW_KEY6"]
    assert ctypes.sizeof(b[b"fp_flows4"].Leaf) == c["FP_SIZEOF_FLOW_VALUE"]
    assert ctypes.sizeof(b[b"fp_flows6"].Leaf) == c["FP_SIZEOF_FLOW_VALUE"]
    assert ctypes.sizeof(b[b"fp_tunnels"].Leaf) == c["FP_SIZEOF_TUNNEL"]
    assert ctypes.sizeof(b[b"fp_tunnel_stats"].Leaf) == c["FP_SIZEOF_TUNNEL_STATS"]
    assert ctypes.sizeof(b[b"fp_config"].Leaf) == c["FP_SIZEOF_CONFIG"]
    assert ctypes.sizeof(b[b"fp_selectors4"].Leaf) == c["FP_SIZEOF_SEL_VALUE4"]
    assert ctypes.sizeof(b[b"fp_selectors6"].Leaf) == c["FP_SIZEOF_SEL_VALUE6"]
    assert ctypes.sizeof(b[b"fp_guard_stats"].Leaf) == c["FP_SIZEOF_GUARD_STATS"]
    assert ctypes.sizeof(b[b"fp_event_layout"].Leaf) == c["FP_SIZEOF_EVENT"]
    assert ctypes.sizeof(b[b"fp_kick_config"].Leaf) == c["FP_SIZEOF_KICK_CONFIG"]
    assert ctypes.sizeof(b[b"fp_kick_stats"].Leaf) == c["FP_SIZEOF_KICK_STATS"]


def _fill(obj: Any, counter: list[int]) -> None:
    """Give every scalar of a ctypes value a distinct small number, in memory order."""
    for name, *_type in type(obj)._fields_:
        value = getattr(obj, name)
        if isinstance(value, ctypes.Array):
            for i in range(len(value)):
                if isinstance(value[i], ctypes.Structure | ctypes.Union):
                    _fill(value[i], counter)
                else:
                    counter[0] += 1
                    value[i] = counter[0]
        elif isinstance(value, ctypes.Structure | ctypes.Union):
            _fill(value, counter)
        else:
            counter[0] += 1
            setattr(obj, name, counter[0])


# every struct key and value of the maps (the others are plain integers)
STRUCTS = [(f"fp_{m}", p) for m in ("flows4", "flows6", "selectors4", "selectors6")
           for p in ("Key", "Leaf")] + [
    (f"fp_{m}", "Leaf") for m in ("tunnels", "tunnel_stats", "guard_stats", "config",
                                  "event_layout")]


@pytest.mark.parametrize(("map_name", "part"), STRUCTS)
def test_bulk_layouts_are_read_from_the_compiled_c(dp: Any, map_name: str, part: str) -> None:
    """layout() turns bcc's ctypes of every map into a struct format: each scalar lands
    where the C put it (filled through ctypes, unpacked through struct)."""
    ctype = getattr(dp.bpf[map_name.encode()], part)
    assert issubclass(ctype, ctypes.Structure)
    v = ctype()
    counter = [0]
    _fill(v, counter)
    lay = layout(ctype)
    assert lay.struct.size == ctypes.sizeof(ctype)
    assert lay.struct.unpack(bytes(v)) == tuple(range(1, counter[0] + 1))


def test_the_sweeper_reads_flow_value_as_the_c_lays_it_out(dp: Any) -> None:
    """The sweeper unpacks fp_flow_value positionally for speed: its order is checked against
    bcc's layout when it is made, and its byte spans come from the ctypes."""
    sw = Sweeper(dp.table)
    leaf = dp.bpf[b"fp_flows4"].Leaf
    assert layout(leaf).names == FLOW_VALUE_SCALARS
    v = leaf(generation=1, tunnel_id=2, created_s=9, last_s=10)
    b = bytes(v)
    assert int.from_bytes(b[sw.created_span], sys.byteorder) == 9
    assert int.from_bytes(b[sw.tunnel_id_span], sys.byteorder) == 2
    assert sw.proto_offset == {4: dp.bpf[b"fp_flows4"].Key.proto.offset,
                                6: dp.bpf[b"fp_flows6"].Key.proto.offset}


def test_the_one_mirror_matches_the_c(dp: Any) -> None:
    """TUNNEL_WORD is written by hand (hold_pinned_tunnels runs before any compile):
    every field, in order, must land where the C puts it."""
    leaf = dp.bpf[b"fp_tunnels"].Leaf
    fields = ["generation", "state", "flags", "pad"]
    assert [f[0] for f in leaf._fields_] == fields
    v = leaf(**{name: i + 1 for i, name in enumerate(fields)})
    assert ft.TUNNEL_WORD.size == ctypes.sizeof(leaf)
    assert ft.TUNNEL_WORD.unpack(bytes(v)) == (1, 2, 3, 4)


def test_no_other_hand_written_layout_in_the_product() -> None:
    """Formats and offsets come from layout.py; the only mirror is TUNNEL_WORD, tested
    above. A new struct.Struct or a byte slice with numbers in the product needs the same."""
    root = Path(controlplane.__file__).parent
    found = []
    for path in sorted(root.glob("*.py")):
        if path.name == "layout.py":  # the one reader
            continue
        for n, text in enumerate(path.read_text().splitlines(), 1):
            if "struct.Struct(" in text or re.search(r"\[\d+:\d+\]", text):
                found.append(f"{path.name}:{n}: {text.strip()}")
    assert [f.split(": ", 1)[1] for f in found] == ['TUNNEL_WORD = struct.Struct("=IBBH")'], found


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

    src = bpf_source()
    # the edits below must hit, or this compiles the loader's text and proves nothing
    ring = "BPF_RINGBUF_OUTPUT(fp_events, FP_EVENT_RING_PAGES);"
    assert ring in src and "FP_FLOWS4_MAX, 0)" in src
    src = src.replace(ring, "BPF_RINGBUF_OUTPUT(fp_events, 1);")
    b = bcc.BPF(text=src.replace("FP_FLOWS4_MAX, 0)", "1024, 0)").encode())
    assert b[b"fp_flows6"].max_entries == ft.CONST["FP_FLOWS6_MAX"]
    b.cleanup()


def test_a_counters_pin_of_an_older_build_is_replaced() -> None:
    """Pins outlive upgrades: an fp_counters map with fewer slots than this build counts is
    dropped at load (every other pinned map is reused), and every reason reads."""
    import ctypes
    import os

    from bcc.libbcc import lib

    from controlplane.datapath import Datapath, DatapathConfig, check_layout, purge_pins
    from controlplane.flow_types import STAT_MAX

    instance = f"fptest-pins{os.getpid()}"
    cfg = DatapathConfig(instance=instance, flows4_max=64, flows6_max=64, tunnels_max=8,
                         btf=False)
    try:
        check_layout(cfg.pin_dir)  # pins of this layout: only the counters' size differs
        lib.bcc_create_map.argtypes = [ctypes.c_int, ctypes.c_char_p] + [ctypes.c_int] * 4
        lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
        percpu_array = 6
        fd = lib.bcc_create_map(percpu_array, b"fp_counters", 4, 8, STAT_MAX - 1, 0)
        assert fd >= 0
        assert lib.bpf_obj_pin(fd, os.fsencode(cfg.pin_dir / "fp_counters")) == 0
        os.close(fd)
        dp = Datapath(cfg).load()
        try:
            counters = dp.table.counters()
            assert counters["NONVPN_UNTRACKED"] == 0 and len(counters) == STAT_MAX
        finally:
            dp.close()
    finally:
        purge_pins(instance)


def test_pinned_maps_are_the_fp_maps_user_space_names() -> None:
    """Every pinned map is named fp_* (so bpffs and bpftool say whose it is), within the
    kernel's 15 characters of a map name, and the pin directory holds exactly the maps
    user space opens by name (MAP_NAMES) and the layout id: a map renamed on one side only
    fails here."""
    import os

    from controlplane.datapath import LAYOUT_PIN, MAP_NAMES, Datapath, DatapathConfig, purge_pins

    instance = f"fptest-names{os.getpid()}"
    cfg = DatapathConfig(instance=instance, flows4_max=64, flows6_max=64, tunnels_max=8,
                         btf=False)
    try:
        dp = Datapath(cfg).load()
        try:
            assert sorted(os.listdir(cfg.pin_dir)) == sorted([*MAP_NAMES, LAYOUT_PIN])
            assert LAYOUT_PIN.startswith("fp_")
            for name in MAP_NAMES:
                assert name.startswith("fp_") and len(name) <= 15, name
                assert dp.bpf[name.encode()].map_fd >= 0
        finally:
            dp.close()
    finally:
        purge_pins(instance)


def test_every_map_in_maps_h_is_named_fp() -> None:
    """The maps that are not pinned (ring buffer, loader and benchmark maps) too."""
    import re
    from importlib.resources import files

    text = files("flowpin_bpf").joinpath("lib/maps.h").read_text()
    names = (re.findall(r'^FP_MAP\("\w+", [^,]+, [^,]+, (\w+),', text, re.M)
             + re.findall(r"^BPF_\w+\((\w+),", text, re.M))
    assert len(names) == 19, names
    assert [n for n in names if not n.startswith("fp_") or len(n) > 15] == []
