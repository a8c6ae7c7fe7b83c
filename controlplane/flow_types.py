"""What the C and the Python share, read from ``bpf/lib/flow_types.h`` at import time: every
``#define FP_*`` and ``FP_* =`` enumerator, and the enums built from them (verdict reasons,
stats, event types, flow side bits). The header is the one definition; struct layouts come
from bcc's ctypes of the compiled maps (see :mod:`controlplane.layout`).
"""

from __future__ import annotations

import re
import struct
from enum import IntEnum
from importlib.resources import files

_DEFINE = re.compile(r"^#define\s+(FP_[A-Z0-9_]+)\s+(0x[0-9a-fA-F]+|\d+)(?:ULL|U)?\s*$")
_ENUMERATOR = re.compile(r"^\s*(FP_[A-Z0-9_]+)\s*=\s*(0x[0-9a-fA-F]+|\d+)\s*,")


def parse_header_constants(text: str) -> dict[str, int]:
    """Every ``#define FP_X <int>`` and ``FP_X = <int>,`` enumerator of a header."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _DEFINE.match(line) or _ENUMERATOR.match(line)
        if m:
            out[m.group(1)] = int(m.group(2), 0)
    return out


HEADER = "lib/flow_types.h"
CONST = parse_header_constants(files("flowpin_bpf").joinpath(*HEADER.split("/")).read_text())


def _enum(name: str, prefix: str, stop: str | None = None) -> type[IntEnum]:
    members = {k[len(prefix):]: v for k, v in CONST.items()
               if k.startswith(prefix) and k != stop}
    return IntEnum(name, members)  # type: ignore[return-value]


Reason = _enum("Reason", "FP_R_", "FP_R_MAX")
Stat = _enum("Stat", "FP_S_", "FP_S_MAX")
EventType = _enum("EventType", "FP_EV_")
Side = _enum("Side", "FP_SIDE_")
Dir = _enum("Dir", "FP_DIR_")
REASON_MAX: int = CONST["FP_R_MAX"]
STAT_MAX: int = CONST["FP_S_MAX"]
SEL_SLOTS: int = CONST["FP_SEL_SLOTS"]
ACCT_BYTES_BITS: int = CONST["FP_ACCT_BYTES_BITS"]
TUNNEL_UP: int = CONST["FP_TUNNEL_UP"]
TUNNEL_DOWN: int = CONST["FP_TUNNEL_DOWN"]
TF_PRESERVE: int = CONST["FP_TF_PRESERVE"]
TF_KICK: int = CONST["FP_TF_KICK"]
# struct fp_tunnel, mirrored for hold_pinned_tunnels, which runs before anything is compiled
# (no bcc types yet); tests/datapath/test_shared_definitions.py proves it equal to the C.
TUNNEL_WORD = struct.Struct("=IBBH")
CF_NO_RECLASSIFY: int = CONST["FP_CF_NO_RECLASSIFY"]
NV_COUNT4: int = CONST["FP_NV_COUNT4"]
NV_OFFSET4: int = CONST["FP_NV_OFFSET4"]
NV_LIMIT4: int = CONST["FP_NV_LIMIT4"]
TC_ACT_UNSPEC = -1  # pkt_cls.h; on a tcx hook the same value is TCX_NEXT (bpf.h)
TC_ACT_OK = 0
TC_ACT_SHOT = 2
# The passes on traffic that is not flowpin's own: the programs after it decide (verdict.h).
NOT_OURS = frozenset(CONST[f"FP_R_PASS_{n}"] for n in ("NONVPN", "UNTRACKED", "NOT_IP",
                                                       "NOTRACK_FULL"))


def reason_passes(reason: int) -> bool:
    """PASS_* reasons come before DROP_* ones (verdict.h relies on the same order)."""
    return reason < CONST["FP_R_DROP_NO_CONN"]


def reason_retval(reason: int) -> int:
    """The TC verdict the data path returns for ``reason`` (verdict.h): SHOT for drops,
    UNSPEC (TCX_NEXT) for traffic that is not flowpin's, OK for its own tunnel traffic."""
    if not reason_passes(reason):
        return TC_ACT_SHOT
    return TC_ACT_UNSPEC if reason in NOT_OURS else TC_ACT_OK
