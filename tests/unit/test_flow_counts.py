"""What a tunnel's counted flows mean (controlplane.flow_counts), read against the tunnel's
control word of the moment: rows of (control word, counts kept) -> counts shown."""

from __future__ import annotations

import pytest

from controlplane.flow_counts import FlowCounts, TunnelCounts, merge_tunnel_zero
from controlplane.tunnel_maps import DatapathTunnel

KEPT = {(1, 3): [5, 2, 700, 900]}  # tunnel 1, generation 3: 5 flows, 2 TCP


def word(up: bool, gen: int = 3, preserve: bool = True) -> DatapathTunnel:
    return DatapathTunnel(1, up, gen, preserve, 0, 0)


# (description, control word now, counts shown for tunnel 1)
ROWS = [
    ("up: flows, none held", word(True), TunnelCounts(5, 0, 2, 700, 900)),
    ("down, preserving: its TCP flows are held", word(False), TunnelCounts(5, 2, 2, 700, 900)),
    ("down, not preserving: nothing held", word(False, preserve=False),
     TunnelCounts(5, 0, 2, 700, 900)),
    ("torn down (new generation): no flows at once", word(True, gen=4), TunnelCounts()),
    ("never written: generation 0, no flows", None, TunnelCounts()),
]


@pytest.mark.parametrize(("desc", "t", "shown"), ROWS, ids=[r[0] for r in ROWS])
def test_counts_are_read_against_the_current_word(desc: str, t: DatapathTunnel | None,
                                                   shown: TunnelCounts) -> None:
    counts = FlowCounts(dict(KEPT), 5, at=1.0)
    assert counts.tunnel(t, 1) == shown
    assert counts.held({1: t} if t else {}) == shown.held


def test_tunnel_zero_is_folded_over_its_generations_and_never_held() -> None:
    merged = merge_tunnel_zero({(0, 1): [1, 1, 10, 0], (0, 2): [2, 0, 5, 5],
                                (1, 3): [5, 2, 700, 900]}, gen0=2)
    assert merged == {(0, 2): [3, 1, 15, 5], (1, 3): [5, 2, 700, 900]}
    counts = FlowCounts(merged, 8)
    assert counts.tunnel(DatapathTunnel(0, False, 2, True, 0, 0), 0) == TunnelCounts(
        3, 0, 1, 15, 5)


def test_no_sweep_yet_has_no_age() -> None:
    assert FlowCounts().age_s() is None
    assert FlowCounts(at=1.0).age_s() is not None
