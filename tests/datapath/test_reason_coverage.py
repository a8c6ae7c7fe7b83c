"""Every verdict reason is exercised by some row of the case tables."""

from __future__ import annotations

import pytest

from controlplane.flow_types import Reason
from tests.datapath import test_malformed, test_verdicts
from tests.datapath.cases import NETS, Pkt

pytestmark = pytest.mark.bpf

MAP_FULL_REASONS = {"DROP_MAP_FULL", "PASS_NOTRACK_FULL"}  # tests/datapath/test_map_full.py


def test_every_reason_has_a_case() -> None:
    seen = set(MAP_FULL_REASONS)
    for case in test_verdicts.CASES:
        for fam in case.families:
            seen |= {s.reason for s in case.steps(NETS[fam]) if isinstance(s, Pkt)}
    seen |= {row[3] for row in test_malformed.ROWS}
    missing = {r.name for r in Reason} - seen
    assert not missing, f"verdict reasons without a test case: {sorted(missing)}"
