"""Data-path tunnel ids: stable, capped below the refusing id, reused once free."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.tunnel_ids import TunnelIds


def test_stable_across_restarts_and_capped(tmp_path: Path) -> None:
    path = tmp_path / "tunnels.json"
    ids = TunnelIds(path, refuse_id=4)
    assert [ids(("c", str(i))) for i in range(5)] == [1, 2, 3, 4, 4]
    assert ids(("c", "0")) == 1
    again = TunnelIds(path, refuse_id=4)
    assert again(("c", "2")) == 3 and again(("c", "3")) == 4  # still no id of its own


def test_retired_ids_are_reused_only_once_no_flow_carries_them(tmp_path: Path) -> None:
    path = tmp_path / "tunnels.json"
    ids = TunnelIds(path, refuse_id=4)
    a, b = ids(("a", "x")), ids(("b", "x"))
    ids.retire(("a", "x"))
    assert ids(("c", "x")) == 3  # a's id is not free yet
    assert ids.free_unused({a}) == []  # a flow still carries it
    assert TunnelIds(path, refuse_id=4).retired == {a}  # kept across a restart
    assert ids.free_unused({b}) == [a]
    assert ids(("d", "x")) == a and ids(("b", "x")) == b


def test_a_tunnel_that_comes_back_keeps_its_id(tmp_path: Path) -> None:
    ids = TunnelIds(tmp_path / "t.json")
    a = ids(("a", "x"))
    ids.retire(("a", "x"))
    assert ids(("a", "x")) == a and ids.retired == set()


def test_first_format_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"site/lan": 1, "other/lan": 2}))
    ids = TunnelIds(path)
    assert ids(("other", "lan")) == 2 and ids(("new", "lan")) == 3


def test_a_batch_saves_its_ids_once_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "tunnels.json"
    ids = TunnelIds(path)
    with ids.batch():
        got = [ids((f"site{i}", "lan")) for i in range(3)]
        assert not path.exists()  # nothing written while the batch runs
    assert TunnelIds(path).ids == {f"site{i}/lan": got[i] for i in range(3)}


def test_a_batch_that_fails_still_saves_what_it_handed_out(tmp_path: Path) -> None:
    path = tmp_path / "tunnels.json"
    ids = TunnelIds(path)
    with pytest.raises(RuntimeError), ids.batch():
        ids(("a", "lan"))
        raise RuntimeError("resync failed half way")
    assert TunnelIds(path).ids == {"a/lan": 1}
