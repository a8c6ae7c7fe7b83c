"""The maps' address codec: addresses and ports are held in network byte order, addresses
as native-endian u32 words (one for IPv4, four for IPv6) whose memory is the address."""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


_TEXTS: dict[int, tuple[object, str, str]] = {}


def _texts(n: IPNetwork | IPAddress) -> tuple[object, str, str]:
    """(n, str(n), repr(n)), cached by the network object's identity: the registry keeps the
    same objects while a tunnel's selectors stand, and a resync or a ``show vpn-context``
    of 1,000 tunnels formats 4,000 of them (milliseconds in ``ipaddress``, whose
    Python-level ``__hash__`` made even a cache keyed by value cost as much). The entry
    holds the object, so its id cannot be reused while it is cached."""
    hit = _TEXTS.get(id(n))
    if hit is None or hit[0] is not n:
        if len(_TEXTS) >= 65536:
            _TEXTS.clear()
        hit = _TEXTS[id(n)] = (n, str(n), repr(n))
    return hit


def net_text(n: IPNetwork) -> str:
    """``str(n)``, cached (see _texts)."""
    return _texts(n)[1]


def net_repr(n: IPNetwork) -> str:
    """``repr(n)``, cached (see _texts)."""
    return _texts(n)[2]


def addr_text(a: IPAddress) -> str:
    """``str(a)``, cached (see _texts): the addresses of flows come from addr4/addr6, the
    same object for the same address, and ``ipaddress`` takes microseconds to format one,
    which each removed-flow record (a teardown line and its connection number) did four
    times."""
    return _texts(a)[1]


def to_words(addr: IPAddress) -> list[int]:
    """Native-endian u32 words whose memory is the address in network order."""
    b = addr.packed
    return [int.from_bytes(b[i:i + 4], "little") for i in range(0, len(b), 4)]


@functools.lru_cache(maxsize=65536)
def addr4(word: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(socket.ntohl(word))


@functools.lru_cache(maxsize=65536)
def addr6(words: tuple[int, ...]) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"".join(w.to_bytes(4, "little") for w in words))


def from_words(words: Any, family: int) -> IPAddress:
    """Address from native-endian words holding network-order bytes (cached: a sweep
    decodes many flows between few hosts)."""
    if family == 4:
        return addr4(int(words[0]))
    return addr6(tuple(int(w) for w in words[:4]))


def port(v: int) -> int:
    return socket.ntohs(v)


def port_to_wire(value: int) -> int:
    """A port as the maps hold it (network byte order in a native u16)."""
    return socket.htons(value)
