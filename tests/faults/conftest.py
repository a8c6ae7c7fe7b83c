"""One lab for the whole fault suite (faults restore it between them; see
:func:`lab.faults.heal`), always removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import require_lab_prerequisites, unique_lab_name


@pytest.fixture(scope="session")
def fault_lab() -> Iterator[dict[str, Any]]:
    require_lab_prerequisites()
    from lab import faults

    lab = faults.make_lab(unique_lab_name("flt"))
    state: dict[str, Any] = {"lab": lab, "index": 0}
    try:
        state["traffic"] = faults.Traffic(lab)
        yield state
    finally:
        if "traffic" in state:
            state["traffic"].close()
        state["lab"].down()
