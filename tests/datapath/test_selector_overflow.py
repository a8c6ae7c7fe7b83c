"""More selector pairs for one remote prefix than a trie entry has slots.

A CHILD_SA with five local subnets (or a range selector, many prefixes) to one remote
prefix is a valid strongSwan conn: its local prefixes are merged until they fit, and all
of its traffic stays its own. Five tunnels with one local subnet each cannot be merged:
the compile must not fail (every other tunnel's selectors would be lost with it) and must
not leak -- the pairs that fit keep their tunnel, the others are refused by the data path.
Run on the real programs with BPF_PROG_TEST_RUN, IPv4 and IPv6.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controlplane.flow_types import SEL_SLOTS
from controlplane.selectors import Selector
from lab import packets as tr
from tests.datapath.cases import NETS, TUN, Net, down, out, reset_state, run_steps, up

pytestmark = pytest.mark.bpf

FIVE = 3  # the tunnel with five local subnets
LOCALS = {4: [f"10.7.{i}.0/24" for i in range(1, 6)],
          6: [f"fd00:7:{i}::/64" for i in range(1, 6)]}
REMOTE = {4: "10.6.0.0/16", 6: "fd00:6::/64"}
HOST = {4: ("10.7.{}.5", "10.6.0.9", "10.7.9.5"), 6: ("fd00:7:{}::5", "fd00:6::9",
                                                     "fd00:7:9::5")}


@pytest.fixture(autouse=True)
def _clean(dp: Any) -> Any:
    """Leave the standard state behind: the next test's reset only removes what
    selectors() lists, and refused pairs are not listed."""
    yield
    dp.table.replace_selectors([])
    reset_state(dp.table)


def standard_and_five(t: Any, tunnels: str = "one") -> list[Selector]:
    """Tunnel 1's standard pairs (as the dp fixture has them) and five local subnets to
    one remote prefix: all of tunnel FIVE (``one``), or one each of tunnels FIVE..FIVE+4
    (``five``)."""
    pairs = [s for s in t.selectors()]
    for fam in (4, 6):
        pairs += [Selector(ipaddress.ip_network(loc), ipaddress.ip_network(REMOTE[fam]),
                           FIVE + (i if tunnels == "five" else 0))
                  for i, loc in enumerate(LOCALS[fam])]
    return pairs


def test_many_subnets_of_one_tunnel_are_merged_and_all_work(dp: Any) -> None:
    t = dp.table
    assert t.replace_selectors(standard_and_five(t)) == []
    t.set_tunnel(FIVE, up=True)
    for fam in (4, 6):
        n: Net = NETS[fam]
        loc, rem, other = HOST[fam]
        run_steps(dp, [out(tr.tcp(n.c, n.s, 41000, 80, "S"), "PASS_NEW")])
        run_steps(dp, [out(tr.udp(loc.format(i), rem, 5000 + i, 53), "PASS_NEW")
                       for i in range(1, 6)])
        run_steps(dp, [out(tr.udp(other, rem, 5009, 53), "PASS_NONVPN")])
        run_steps(dp, [down(FIVE)] + [out(tr.udp(loc.format(i), rem, 6000 + i, 53),
                                          "DROP_TUNNEL_DOWN") for i in range(1, 6)]
                  + [up(FIVE)])


def test_range_selector_fits_with_the_least_added_space(dp: Any) -> None:
    """10.1.0.1..10.1.0.254 is 14 prefixes; merged into 4 slots that add as few
    addresses as possible, never another tunnel's."""
    from controlplane.selectors import coalesce

    rng = list(ipaddress.summarize_address_range(ipaddress.ip_address("10.7.0.1"),
                                                 ipaddress.ip_address("10.7.0.254")))
    remote = ipaddress.ip_network("10.6.0.0/16")
    other = Selector(ipaddress.ip_network("10.7.0.0/32"), remote, 9)
    cover = [Selector(p, remote, FIVE) for p in rng] + [other]
    cover.sort(key=lambda s: -s.local.prefixlen)
    merged = coalesce(cover, SEL_SLOTS)
    assert len(merged) <= SEL_SLOTS and other in merged
    mine = [s.local for s in merged if s.tunnel_id == FIVE]
    assert all(any(p.subnet_of(m) for m in mine) for p in rng)  # nothing of it lost
    # nothing of tunnel 9 taken: where a merged prefix overlaps its /32, the /32 comes
    # first in the slots (the data path takes the first match)
    first = merged.index(other)
    assert all(merged.index(s) > first for s in merged
               if s.tunnel_id == FIVE and s.local.overlaps(other.local))
    assert sum(m.num_addresses for m in mine) <= 256


def test_overflow_compiles_what_fits_and_refuses_the_rest(dp: Any) -> None:
    t = dp.table
    overflows = t.replace_selectors(standard_and_five(t, "five"))
    assert [(str(o.remote), len(o.kept), len(o.refused)) for o in overflows] == [
        (REMOTE[4], SEL_SLOTS - 1, 2), (REMOTE[6], SEL_SLOTS - 1, 2)]
    assert [str(o.refuse_local) for o in overflows] == ["10.7.4.0/23", "fd00:7:4::/47"]
    # Only real pairs are listed as selectors; the refusing slot is not a tunnel's.
    assert {s.tunnel_id for s in t.selectors()} == {1, 2, FIVE, FIVE + 1, FIVE + 2}
    for i in range(5):
        t.set_tunnel(FIVE + i, up=True)

    for fam in (4, 6):
        n: Net = NETS[fam]
        loc, rem, other = HOST[fam]
        # Every other tunnel's selectors were compiled: tunnel 1 works.
        run_steps(dp, [out(tr.tcp(n.c, n.s, 41000, 80, "S"), "PASS_NEW")])
        # The three pairs that fit carry their tunnel's traffic.
        run_steps(dp, [out(tr.udp(loc.format(i), rem, 5000 + i, 53), "PASS_NEW")
                       for i in (1, 2, 3)])
        # The two that do not are refused, never passed as non-VPN traffic.
        run_steps(dp, [out(tr.udp(loc.format(i), rem, 5000 + i, 53), "DROP_TUNNEL_DOWN")
                       for i in (4, 5)])
        # A LAN host outside every local prefix still reaches the remote as non-VPN.
        run_steps(dp, [out(tr.udp(other, rem, 5009, 53), "PASS_NONVPN")])
    refused = t.tunnel(t.refuse_id)
    # Counted on the refusing id: locals 4 and 5, both families.
    assert not refused.up and refused.refused == 4, refused


def test_refusing_slot_is_dropped_once_the_pairs_fit(dp: Any) -> None:
    t = dp.table
    assert t.replace_selectors(standard_and_five(t, "five"))
    fits = [s for s in standard_and_five(t, "five") if str(s.local) not in
            (LOCALS[4][3:] + LOCALS[6][3:])]
    assert t.replace_selectors(fits) == []
    t.set_tunnel(FIVE, up=True)
    loc, rem, other = HOST[4]
    run_steps(dp, [out(tr.udp(loc.format(4), rem, 5004, 53), "PASS_NONVPN"),
                   out(tr.udp(loc.format(1), rem, 5001, 53), "PASS_NEW")])
    assert all(s.tunnel_id != t.refuse_id for s in t.selectors())


def test_add_selector_beyond_the_slots_does_not_raise(dp: Any) -> None:
    t = dp.table
    t.add_selector(TUN, NETS[4].local5, "10.6.0.0/16")
    for i, loc in enumerate(LOCALS[4]):
        got = t.add_selector(FIVE + i, loc, REMOTE[4])
        assert got == [] or got[0].refused, got
    # Most specific local first: the three first /24s keep slots; the last two and tunnel
    # 1's /16 share the refusing slot (none of them forgotten by the adds that followed).
    assert got and [str(s.local) for s in got[0].refused] == LOCALS[4][3:] + [
        NETS[4].local5], got
    # Tunnel 1's pairs are all still there (the add did not abort the compile).
    assert {(str(s.local), str(s.remote)) for s in t.selectors() if s.tunnel_id == TUN} >= {
        (NETS[4].local, NETS[4].remote), (NETS[4].local3, NETS[4].remote3)}


@pytest.mark.parametrize("batch_works", [True, False], ids=["batch", "no-batch"])
def test_trie_entries_written_in_one_batch_or_one_by_one(dp: Any, monkeypatch: Any,
                                                         batch_works: bool) -> None:
    """A compile of many remote prefixes writes the trie in one batch update; on a kernel
    that refuses batch updates of LPM tries it writes them one by one, and does not ask
    again. Either way every pair classifies its traffic."""
    t = dp.table
    if not batch_works:
        def refuse(*_a: Any) -> None:
            raise Exception("BPF_MAP_UPDATE_BATCH has failed: Invalid argument")

        monkeypatch.setattr(t, "_trie_batch", None)
        for trie in (t.sel4, t.sel6):
            monkeypatch.setattr(trie, "items_update_batch", refuse)
    sels = [Selector(ipaddress.ip_network(f"10.8.{i}.0/24"),
                     ipaddress.ip_network(f"10.9.{i}.0/24"), TUN) for i in range(20)]
    t.replace_selectors(sels)
    assert t._trie_batch is batch_works
    assert sorted(t.selectors(), key=str) == sorted(sels, key=str)
    run_steps(dp, [out(tr.udp("10.8.7.5", "10.9.7.9", 5000, 53), "PASS_NEW"),
                   out(tr.udp("10.8.7.5", "10.9.8.9", 5000, 53), "PASS_NONVPN")])


def test_batch_entries_are_packed_as_the_fields_would_be_set(dp: Any) -> None:
    """The batch write packs keys and values with struct; the one-by-one write sets
    bcc's ctypes fields. Both must give the same bytes, for both families, a full entry
    and a short one."""
    t = dp.table
    n = ipaddress.ip_network
    for fam, trie, loc, rem in ((4, t.sel4, "10.{i}.0.0/16", "172.16.{i}.0/24"),
                                (6, t.sel6, "fd01:{i}::/48", "fd02:{i}::/64")):
        entries = [(n(rem.format(i=i)), [Selector(n(loc.format(i=i + j)), n(rem.format(i=i)),
                                                  j + 1) for j in range(k)])
                   for i, k in ((1, SEL_SLOTS), (2, 1), (3, 3))]
        keys, values = t._sel_arrays(trie, fam, entries)
        for i, (r, cover) in enumerate(entries):
            assert bytes(keys[i]) == bytes(t._sel_key(trie, fam, r)), (fam, r)
            assert bytes(values[i]) == bytes(t._sel_leaf(trie, fam, cover)), (fam, r)
