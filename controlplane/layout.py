"""Struct layouts for fast bulk decoding, read from bcc's ctypes of the compiled maps
(``table.Key`` / ``table.Leaf``), never written by hand: the C header stays the one
definition. A batch read of a million flows is decoded with :mod:`struct` (no Python object
per entry); this module builds those formats and byte spans from the ctypes that bcc
generated from the C, padding included.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Any

_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
          (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}


def _scalar_code(ctype: Any) -> str:
    size = ctypes.sizeof(ctype)
    try:
        signed = ctype(-1).value < 0
    except TypeError:  # c_char and the like: bytes, read unsigned
        signed = False
    try:
        return _CODES[(size, signed)]
    except KeyError:
        raise TypeError(f"no struct code for {ctype!r}") from None


def _flatten(ctype: Any, prefix: str, base: int, out: list[tuple[int, str, str]]) -> None:
    """(offset, struct code, name) of every scalar in ``ctype``: arrays and nested
    structs and unions (bcc makes them for anonymous members) unrolled in memory order."""
    if issubclass(ctype, ctypes.Array):
        elem = ctype._type_
        step = ctypes.sizeof(elem)
        for i in range(ctype._length_):
            _flatten(elem, f"{prefix}[{i}]", base + i * step, out)
    elif issubclass(ctype, ctypes.Union):
        # a union is read as its first member (the others alias it)
        name, member = ctype._fields_[0][:2]
        _flatten(member, f"{prefix}.{name}" if prefix else name, base, out)
    elif issubclass(ctype, ctypes.Structure):
        for name, member, *_bits in ctype._fields_:
            off = getattr(ctype, name).offset
            _flatten(member, f"{prefix}.{name}" if prefix else name, base + off, out)
    else:
        out.append((base, _scalar_code(ctype), prefix))


@dataclass(frozen=True)
class Layout:
    """A ctypes struct as a :class:`struct.Struct` in native byte order: ``names`` are the
    scalars it unpacks, in order (arrays as ``seq[0]``, ``seq[1]``)."""

    struct: struct.Struct
    names: tuple[str, ...]

    def index(self, name: str) -> int:
        return self.names.index(name)


def layout(ctype: Any) -> Layout:
    scalars: list[tuple[int, str, str]] = []
    _flatten(ctype, "", 0, scalars)
    fmt, pos = "=", 0
    for off, code, _name in scalars:
        if off < pos:
            raise TypeError(f"{ctype.__name__}: overlapping fields at {off}")
        fmt += "x" * (off - pos) + code
        pos = off + struct.calcsize("=" + code)
    fmt += "x" * (ctypes.sizeof(ctype) - pos)
    return Layout(struct.Struct(fmt), tuple(n for _o, _c, n in scalars))


def span(ctype: Any, first: str, last: str | None = None) -> slice:
    """The bytes of fields ``first`` .. ``last`` (adjacent, in this order) of ``ctype``."""
    a = getattr(ctype, first)
    b = getattr(ctype, last or first)
    if b.offset < a.offset:
        raise ValueError(f"{ctype.__name__}: {last} comes before {first}")
    return slice(a.offset, b.offset + b.size)
