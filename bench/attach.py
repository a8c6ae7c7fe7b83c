"""The benchmarks' ``--attach`` option: which kind of TC hook the TC contenders sit on.

``auto`` is what a flowpin daemon on this kernel would use (the data path's probe: tcx
where the kernel has it, else clsact); several modes (``tcx,clsact``) are measured side by
side in the same rounds, against the same baseline. The first mode keeps the contenders'
plain names (``flowpin``), the others get the mode as a suffix (``flowpin_clsact``).
"""

from __future__ import annotations

import argparse

from controlplane.tcx import ATTACH_MODES, probe


def parse(text: str) -> tuple[str, ...]:
    """``--attach``: one attach mode or several, comma-separated."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in ATTACH_MODES]
    if not modes or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: one or more of {', '.join(ATTACH_MODES)}, "
                                         "comma-separated")
    return modes


def resolve(asked: tuple[str, ...]) -> tuple[str, ...]:
    """The attach modes to measure ("tcx", "clsact"), each once, in the order asked.
    Raises OSError for tcx on a kernel without it."""
    out: list[str] = []
    for a in asked:
        mode = probe(a).mode
        if mode not in out:
            out.append(mode)
    return tuple(out)


def name(base: str, mode: str, primary: str) -> str:
    """The contender ``base`` attached in ``mode``: plain names for the primary mode."""
    return base if mode == primary else f"{base}_{mode}"


def add_option(ap: argparse.ArgumentParser, default: str = "auto") -> None:
    ap.add_argument("--attach", default=parse(default), type=parse,
                    help="how the TC contenders are attached: auto (what the data path's "
                    "probe picks here), tcx, clsact, or several side by side in the same "
                    f"rounds against the same baseline, e.g. tcx,clsact (default {default})")
