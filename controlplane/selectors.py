"""Selectors: which (local, remote) prefix pairs map to which tunnel, and how they are laid
out in the data path's LPM tries (each remote prefix lists the pairs that cover it, in
``SEL_SLOTS`` slots, most specific first; what does not fit is refused, never passed)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controlplane.addresses import IPNetwork
from controlplane.flow_types import SEL_SLOTS


@dataclass(frozen=True)
class Selector:
    local: IPNetwork
    remote: IPNetwork
    tunnel_id: int
    # Hashed once, as the dataclass would hash it: ipaddress hashes a network in Python,
    # and a resync of 1,000 tunnels hashes its 2,000 selectors in a set, then a dict.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.local, self.remote, self.tunnel_id)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True)
class Overflow:
    """A remote prefix to which more selector pairs apply than a trie entry has slots:
    ``kept`` got a slot each, ``refused`` are covered by one last slot that refuses
    traffic from ``refuse_local`` (see :func:`plan`)."""

    remote: IPNetwork
    kept: tuple[Selector, ...]
    refused: tuple[Selector, ...]
    refuse_local: IPNetwork

    def text(self, name_of: Callable[[int], str] = lambda tid: f"id {tid}") -> str:
        pairs = ", ".join(f"{s.local}->{s.remote} ({name_of(s.tunnel_id)})"
                          for s in self.refused)
        return (f"{len(self.kept) + len(self.refused)} selector pairs apply to remote "
                f"{self.remote}, the data path holds {SEL_SLOTS}: traffic of {pairs} is "
                f"refused (from {self.refuse_local}), never passed in clear")

    def __str__(self) -> str:
        return self.text()


def covering_prefix(nets: Iterable[IPNetwork]) -> IPNetwork:
    """The longest prefix that contains every one of ``nets`` (one family)."""
    nets = list(nets)
    out = nets[0]
    while not all(n.subnet_of(out) for n in nets):  # type: ignore[arg-type]
        out = out.supernet()
    return out


def coalesce(cover: list[Selector], slots: int) -> list[Selector]:
    """Merge local prefixes of one tunnel (same remote prefix) until ``cover`` fits in
    ``slots``, each time the two whose covering prefix is the longest: the least address
    space added. A merge whose covering prefix would overlap another tunnel's local
    prefix in ``cover`` is never made (it could take that tunnel's traffic). The merged
    prefix may hold a few addresses the tunnel's selectors do not (a range's edges): their
    traffic is then the tunnel's to flowpin -- held while it is down, and stopped by the
    WAN guard if strongSwan does not protect it -- never another tunnel's, never leaked.
    Returns ``cover`` re-sorted most specific first; still too long if no merge was
    possible (the caller refuses the rest)."""
    cover = list(cover)
    while len(cover) > slots:
        best: tuple[int, int, IPNetwork] | None = None
        for i, a in enumerate(cover):
            for j in range(i + 1, len(cover)):
                b = cover[j]
                if (a.tunnel_id, a.remote) != (b.tunnel_id, b.remote):
                    continue
                merged = covering_prefix((a.local, b.local))
                if any(o.tunnel_id != a.tunnel_id and o.local.overlaps(merged)  # type: ignore[arg-type]
                       and _slot_order(o.remote, o.local) >= _slot_order(a.remote, merged)
                       for o in cover):
                    continue  # it would come first for that tunnel's addresses
                if best is None or merged.prefixlen > best[2].prefixlen:
                    best = (i, j, merged)
        if best is None:
            break
        i, j, merged = best
        a = cover[i]
        # the merged prefix also swallows any other local of the tunnel inside it
        cover = [s for s in cover if not ((s.tunnel_id, s.remote) == (a.tunnel_id, a.remote)
                                         and s.local.subnet_of(merged))]  # type: ignore[arg-type]
        cover.append(Selector(merged, a.remote, a.tunnel_id))
        cover.sort(key=lambda s: _slot_order(s.remote, s.local))
    return cover


def _slot_order(remote: IPNetwork, local: IPNetwork) -> tuple[int, int]:
    """Where a pair stands in a trie entry's slots: most specific remote, then local,
    first (the data path takes the first match)."""
    return (-remote.prefixlen, -local.prefixlen)


def plan(pairs: list[Selector], refuse_id: int,
         slots: int = SEL_SLOTS) -> tuple[dict[IPNetwork, list[Selector]], list[Overflow]]:
    """The trie entries of one family: each remote prefix R with the pairs whose remote
    prefix covers R, most specific remote then local first (ties keep the order of
    ``pairs``), at most ``slots`` of them; and what did not fit.

    Too many pairs for one R: local prefixes of one tunnel are merged first (see
    :func:`coalesce`); then the first ``slots - 1`` pairs keep their slots and the last
    slot refuses the local prefix covering all the others, pointing at ``refuse_id``."""
    entries: dict[IPNetwork, list[Selector]] = {}
    overflows = []
    # The pairs by remote prefix (in the order of ``pairs``): the pairs covering R are those
    # of R's supernets, one per prefix length in use -- a few dict lookups per R, where
    # testing every pair against every R cost 2 s for 1,000 tunnels.
    # Keyed by (prefix length, address as an int): ipaddress hashes a network and builds
    # a supernet in Python, ~1 us each, thousands of times in a resync of 1,000 tunnels.
    by_remote: dict[tuple[int, int], list[Selector]] = {}
    remotes: dict[tuple[int, int], IPNetwork] = {}
    for s in pairs:
        key = (s.remote.prefixlen, int(s.remote.network_address))
        if key not in remotes:
            remotes[key] = s.remote
            by_remote[key] = []
        by_remote[key].append(s)
    bits = pairs[0].remote.max_prefixlen if pairs else 32
    masks = {p: ((1 << p) - 1) << (bits - p) for p in sorted({p for p, _ in by_remote})}
    for plen, addr in sorted(by_remote):
        r = remotes[(plen, addr)]
        cover = [s for p, m in masks.items() if p <= plen
                 for s in by_remote.get((p, addr & m), ())]
        # stable: pairs tied on both lengths share one remote, and keep their order
        cover.sort(key=lambda s: (-s.remote.prefixlen, -s.local.prefixlen))
        if len(cover) > slots:
            cover = coalesce(cover, slots)
        if len(cover) > slots:
            kept, refused = cover[:slots - 1], cover[slots - 1:]
            local = covering_prefix(s.local for s in refused)
            cover = kept + [Selector(local, r, refuse_id)]
            overflows.append(Overflow(r, tuple(kept), tuple(refused), local))
        entries[r] = cover
    return entries, overflows
