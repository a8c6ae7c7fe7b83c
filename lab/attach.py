"""The attach mode the test rig asks of every data path and daemon it starts.

``FLOWPIN_TEST_ATTACH`` = auto (default), tcx or clsact: the whole suite (data path, lab and
e2e tiers) runs on either kind of TC hook without editing a test (`make test-clsact`).
"""

from __future__ import annotations

import os

ENV = "FLOWPIN_TEST_ATTACH"
MODES = ("auto", "tcx", "clsact")


def mode() -> str:
    """The attach mode asked of the product (datapath.attach)."""
    value = os.environ.get(ENV, "auto") or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: one of {', '.join(MODES)}")
    return value


def resolved() -> str:
    """What that mode is on this kernel: "tcx" or "clsact" (the product's own probe)."""
    from controlplane.tcx import probe

    return probe(mode()).mode
