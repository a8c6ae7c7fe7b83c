"""Pinned maps carry their layout: a flowpin never reuses maps pinned by a build whose
structs or maps differ (an upgrade, a downgrade), and says what to do instead.

The layout id is a hash of the C that defines what the pinned maps hold (flow_types.h and
maps.h, comments and spacing aside); it is pinned beside the maps before any of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from controlplane import libbpf
from controlplane.datapath import (
    LAYOUT_PIN,
    LAYOUT_SOURCES,
    Datapath,
    DatapathConfig,
    LayoutMismatch,
    hold_pinned_tunnels,
    layout_id,
    pinned_layout,
    purge_pins,
)
from controlplane.flow_types import TUNNEL_UP, TUNNEL_WORD

pytestmark = pytest.mark.bpf

SOURCES = [Path(__file__).parents[2] / "bpf" / name for name in LAYOUT_SOURCES]


def _texts() -> list[str]:
    return [p.read_text() for p in SOURCES]


# What changes the layout and what does not: (description, edit of maps.h's text, changes?)
EDITS = [
    ("a comment", lambda t: "/* a new comment */\n" + t, False),
    ("spacing", lambda t: t.replace(", 0);", ",\t  0);", 1), False),
    ("a map renamed (its pin's name)", lambda t: t.replace("flows4", "flows4_renamed"), True),
    ("a map's type", lambda t: t.replace('FP_MAP("hash"', 'FP_MAP("lru_hash"', 1), True),
]


@pytest.mark.parametrize("what,edit,changes", EDITS, ids=[e[0] for e in EDITS])
def test_what_changes_the_layout(what: str, edit, changes: bool) -> None:
    types, maps = _texts()
    edited = edit(maps)
    assert edited != maps, f"the edit ({what}) no longer applies to maps.h"
    assert (layout_id([types, edited]) != layout_id([types, maps])) is changes


def test_a_struct_field_changes_the_layout() -> None:
    types, maps = _texts()
    edited = re.sub(r"(struct \w+ \{)", r"\1\n\t__u32 added;", types, count=1)
    assert edited != types
    assert layout_id([edited, maps]) != layout_id([types, maps])


def _pin_layout(pin_dir: Path, value: int) -> None:
    fd = libbpf.obj_get(str(pin_dir / LAYOUT_PIN))
    try:
        libbpf.array_update(fd, 0, value.to_bytes(8, "little"))
    finally:
        os.close(fd)


def test_maps_of_another_layout_are_refused_and_left_alone() -> None:
    instance = f"fptest-layout{os.getpid()}"
    cfg = DatapathConfig(instance=instance, flows4_max=64, flows6_max=64, tunnels_max=8,
                         btf=False)
    try:
        dp = Datapath(cfg).load()
        dp.table.set_tunnel(1, up=True, preserve=True)
        dp.close()
        assert pinned_layout(cfg.pin_dir) == layout_id()
        # the same layout: reused
        dp = Datapath(cfg).load()
        assert dp.reused_pins
        dp.close()

        other = layout_id() ^ 0x5A5A
        _pin_layout(cfg.pin_dir, other)
        before = sorted(p.name for p in cfg.pin_dir.iterdir())
        for start in (lambda: Datapath(cfg).load(), lambda: hold_pinned_tunnels(instance)):
            with pytest.raises(LayoutMismatch) as exc:
                start()
            text = str(exc.value)
            assert f"{other:016x}" in text and f"{layout_id():016x}" in text, text
            assert str(cfg.pin_dir) in text and f"rm -r {cfg.pin_dir}" in text, text
        # nothing touched: the maps are all there, and the tunnel still up (held flows of
        # another layout are not this build's to rewrite)
        assert sorted(p.name for p in cfg.pin_dir.iterdir()) == before
        fd = libbpf.obj_get(str(cfg.pin_dir / "fp_tunnels"))
        try:
            word = libbpf.array_lookup(fd, 1, TUNNEL_WORD.size)
        finally:
            os.close(fd)
        assert TUNNEL_WORD.unpack(word)[1] == TUNNEL_UP

        # what the message says to do: then a fresh start
        purge_pins(instance)
        dp = Datapath(cfg).load()
        assert not dp.reused_pins and pinned_layout(cfg.pin_dir) == layout_id()
        dp.close()
    finally:
        purge_pins(instance)


def test_maps_from_before_layout_ids_are_refused() -> None:
    """A pin directory with maps but no layout pin: made by a flowpin without layout ids."""
    instance = f"fptest-nolayout{os.getpid()}"
    cfg = DatapathConfig(instance=instance, flows4_max=64, flows6_max=64, tunnels_max=8,
                         btf=False)
    try:
        Datapath(cfg).load().close()
        (cfg.pin_dir / LAYOUT_PIN).unlink()
        with pytest.raises(LayoutMismatch, match="before layout ids"):
            Datapath(cfg).load()
        assert (cfg.pin_dir / "fp_flows4").exists()
    finally:
        purge_pins(instance)
