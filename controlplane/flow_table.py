"""Typed view of the data path's maps: flows, selectors, tunnels, counters, config, events.

Struct layouts come from bcc's generated ctypes (``table.Key`` / ``table.Leaf``), and the
enums and ``#define``s are parsed from ``bpf/lib/flow_types.h`` at import time, so the C
header is the one definition of everything the two sides share.

Writes the control plane makes on a tunnel are single map updates: set state, bump the
generation (teardown of every flow of the tunnel at once), pin or release (the PRESERVE
flag). Counters are per-CPU and summed here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import itertools
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from controlplane.addresses import IPNetwork, from_words, port, to_words
from controlplane.flow_types import (
    CF_NO_RECLASSIFY,
    NV_COUNT4,
    NV_LIMIT4,
    NV_OFFSET4,
    SEL_SLOTS,
    STAT_MAX,
    TF_KICK,
    TF_PRESERVE,
    TUNNEL_DOWN,
    TUNNEL_UP,
    Reason,
    Stat,
)
from controlplane.flows import Flow, FlowKey, decode_value
from controlplane.layout import layout
from controlplane.ring_events import Event, EventDecoder
from controlplane.selectors import Overflow, Selector, plan
from controlplane.tunnel_maps import DatapathTunnel


@dataclass
class ConfigEntry:
    """fp_config: test clock, pickup window, event interval, jiffies->ns clock mapping."""

    now_ns: int
    attach_ns: int
    pickup_s: int
    event_interval_ms: int
    base_ns: int
    base_jiffies: int
    ns_per_jiffy: int
    flags: int = 0  # enum fp_config_flags


@dataclass
class RawFlows:
    """Flows as read by one batch lookup: ctypes arrays plus the count (sweeper input)."""

    family: int
    keys: Any
    values: Any
    count: int
    key_size: int = field(default=0)
    value_size: int = field(default=0)
    key_type: Any = None  # bcc's ctypes of the C struct
    value_type: Any = None


class FlowTable:
    """The control plane's handle on one loaded data path (a ``bcc.BPF`` object)."""

    def __init__(self, bpf: Any) -> None:
        self.bpf = bpf
        self.flows4 = bpf[b"fp_flows4"]
        self.flows6 = bpf[b"fp_flows6"]
        self.sel4 = bpf[b"fp_selectors4"]
        self.sel6 = bpf[b"fp_selectors6"]
        self.tunnels_map = bpf[b"fp_tunnels"]
        self.tunnel_stats_map = bpf[b"fp_tunnel_stats"]
        self.counters_map = bpf[b"fp_counters"]
        self.guard_stats_map = bpf[b"fp_guard_stats"]
        self.config_map = bpf[b"fp_config"]
        self.nonvpn_map = bpf[b"fp_nonvpn"]
        self.kick_config_map = bpf[b"fp_kick_config"]
        self.kick_stats_map = bpf[b"fp_kick_stats"]
        self.kick_budget_map = bpf[b"fp_kick_budget"]
        self.EventStruct = bpf[b"fp_event_layout"].Leaf
        self._decode_event = EventDecoder(self.EventStruct)
        self._ring_open = False
        self._pending: list[Event] = []
        # The last id of the tunnel array is never a tunnel: its entry stays DOWN, so
        # selectors that point to it refuse their traffic (counted in its fp_tunnel_stats).
        self.refuse_id: int = self.tunnels_map.max_entries - 1
        self._compiled: dict[int, list[Selector]] = {}
        self._written: dict[int, dict[IPNetwork, tuple[Selector, ...]]] = {}  # see _compile
        self._trie_batch: bool | None = None  # LPM batch updates work (None: not tried)
        # bulk decoders, from bcc's ctypes of the compiled C (see layout.py)
        self._tunnel_word = layout(self.tunnels_map.Leaf)
        # Tunnel control words of a batch (:meth:`tunnel_writes`): id -> word as read or
        # as changed, the ids changed, and the thread that opened it (other threads read
        # and write the map itself); None outside a batch.
        self._words: dict[int, Any] | None = None
        self._words_changed: set[int] = set()
        self._words_owner: int | None = None
        self._tunnel_stats = layout(self.tunnel_stats_map.Leaf)
        self._guard_stats = layout(self.guard_stats_map.Leaf)
        self._kick_stats = layout(self.kick_stats_map.Leaf)

    # -- config / clock ----------------------------------------------------------------
    def config(self) -> ConfigEntry:
        c = self.config_map[ctypes.c_uint32(0)]
        return ConfigEntry(c.now_ns, c.attach_ns, c.pickup_s, c.event_interval_ms, c.base_ns,
                      c.base_jiffies, c.ns_per_jiffy, c.flags)

    def update_config(self, **fields: int) -> None:
        """Write some fields of the config entry (see :class:`ConfigEntry`); the others keep
        their value."""
        k = ctypes.c_uint32(0)
        c = self.config_map[k]
        for name, value in fields.items():
            if not hasattr(c, name):
                raise AttributeError(f"config has no field {name!r}")
            setattr(c, name, value)
        self.config_map[k] = c

    def set_reclassify(self, on: bool) -> None:
        """reclassify-vpn in the data path: on, a non-VPN flow that a selector change puts
        in a tunnel is cleared (as the ASA clears it); off, it is bound to that tunnel as
        it is (not cut, but held or refused with the tunnel). See __no_flow in policy.h."""
        flags = self.config().flags
        self.update_config(flags=(flags & ~CF_NO_RECLASSIFY) if on
                           else (flags | CF_NO_RECLASSIFY))

    def set_clock(self, now_ns: int) -> None:
        """Tests: make the data path use ``now_ns`` as its clock (0 = real clock)."""
        self.update_config(now_ns=now_ns)

    # -- tunnels -----------------------------------------------------------------------
    def _tkey(self, tunnel_id: int) -> ctypes.c_uint32:
        if not 0 <= tunnel_id < self.tunnels_map.max_entries:
            raise ValueError(f"tunnel id {tunnel_id} out of range "
                             f"0..{self.tunnels_map.max_entries - 1}")
        return ctypes.c_uint32(tunnel_id)

    def _batching(self) -> bool:
        return self._words is not None and self._words_owner == threading.get_ident()

    def _word(self, tunnel_id: int) -> Any:
        """A tunnel's control word, to read: from this thread's batch if one is open
        (as the batch has changed it), else from the map."""
        if not self._batching():
            return self.tunnels_map[self._tkey(tunnel_id)]
        return self.tunnels_map.Leaf.from_buffer_copy(self._batched_word(tunnel_id))

    def _batched_word(self, tunnel_id: int) -> Any:
        """This thread's batch's copy of a tunnel's control word."""
        assert self._words is not None
        w = self._words.get(tunnel_id)
        if w is None:  # never in the array's batch read: a zero word
            w = self._words[tunnel_id] = self.tunnels_map.Leaf()
        return w

    def _change_word(self, tunnel_id: int, change: Callable[[Any], None]) -> Any:
        """Apply ``change`` to a tunnel's control word and write it (in this thread's
        batch, if one is open). Returns the word as written."""
        if self._batching():
            w = self._batched_word(tunnel_id)
            change(w)
            self._words_changed.add(tunnel_id)
            return w
        k = self._tkey(tunnel_id)
        words = self._words
        w = self.tunnels_map[k]
        change(w)
        self.tunnels_map[k] = w
        if words is not None and tunnel_id in words:
            change(words[tunnel_id])  # another thread's batch must not undo this change
        return w

    @contextlib.contextmanager
    def tunnel_writes(self) -> Iterator[None]:
        """Gather the tunnel control words written inside into one batch write at the end.

        A resync of 1,000 tunnels, or charon lost with all of them UP, wrote 2,000-3,000
        words one read-modify-write (two syscalls) each: ~20 ms. Here the array is read
        once, the words change in memory (reads inside see the changes) and the changed
        ones are written with one batch update -- all of them at once, so a DOWN written
        early in the batch reaches the data path when the batch ends (microseconds per
        tunnel later), never later than one by one would have got the last one there.
        A batch write that fails is redone one word at a time (each write is whole); what
        still fails is raised. The data path only reads the words. Only the thread that
        opened the batch sees it: another thread reads and writes the map as without one
        (and its writes are not undone by the batch's); nested, the outer one writes.
        """
        if self._words is not None:  # nested (the outer one writes), or another thread's
            yield                    # batch (this thread writes as it goes)
            return
        keys, values, n, ksz, _vsz = self._batch(self.tunnels_map)
        ids = memoryview(keys).cast("B")[: n * ksz].cast("I")
        leaf = self.tunnels_map.Leaf
        self._words_changed = set()
        self._words = {ids[i]: leaf.from_buffer_copy(values[i]) for i in range(n)}
        self._words_owner = threading.get_ident()
        try:
            yield
        finally:
            words, changed = self._words, sorted(self._words_changed)
            self._words, self._words_changed, self._words_owner = None, set(), None
            self._write_words({tid: words[tid] for tid in changed})

    def _write_words(self, words: dict[int, Any]) -> None:
        if not words:
            return
        keys = (ctypes.c_uint32 * len(words))(*words)
        values = (self.tunnels_map.Leaf * len(words))(*words.values())
        self._update_batch(self.tunnels_map, keys, values,
                           lambda: ((self._tkey(tid), w) for tid, w in words.items()))

    @staticmethod
    def _update_batch(table: Any, keys: Any, values: Any,
                      items: Callable[[], Iterable[tuple[Any, Any]]]) -> bool:
        """Write ``keys``/``values`` (ctypes arrays) in one BPF_MAP_UPDATE_BATCH; if it is
        refused, the same elements (``items()``: key, value) one at a time. Returns whether
        the batch was taken. A refused batch may have written a part: each element's write
        replaces it whole, so writing them all again is safe."""
        try:  # only the syscall: bcc raises a bare Exception for its failure
            table.items_update_batch(keys, values)
            return True
        except Exception:  # noqa: BLE001 -- written one by one; a real failure raises there
            pass
        FlowTable._write_each(table, items())
        return False

    @staticmethod
    def _write_each(table: Any, items: Iterable[tuple[Any, Any]]) -> None:
        """Write each (key, value), every one tried: one failure must not stop the others
        (a tunnel's DOWN, another tunnel's selectors). The first failure is raised after."""
        failed: list[Exception] = []
        for k, v in items:
            try:
                table[k] = v
            except Exception as exc:  # noqa: BLE001 -- raised below, after the others
                failed.append(exc)
        if failed:
            raise failed[0]

    def set_tunnel(self, tunnel_id: int, *, up: bool | None = None,
                   generation: int | None = None, preserve: bool | None = None) -> None:
        """Set a tunnel's control word in ONE map write; unspecified fields keep their
        value. Tunnel 0 is the non-VPN pseudo-tunnel (only its generation matters).
        Inside :meth:`tunnel_writes`, the write waits for the batch's end."""
        def change(t: Any) -> None:
            if up is not None:
                t.state = TUNNEL_UP if up else TUNNEL_DOWN
            if generation is not None:
                t.generation = generation & 0xFFFFFFFF
            if preserve is not None:
                t.flags = (t.flags | TF_PRESERVE) if preserve else (t.flags & ~TF_PRESERVE)

        self._change_word(tunnel_id, change)

    # -- the kick (bpf/lib/kick.h) -----------------------------------------------------
    def set_kick_config(self, *, src4: str | None, src6: str | None, interval_ms: int,
                        budget: int) -> None:
        """Source addresses (the gateway's LAN addresses; None = no kick in that family)
        and limits of the ICMP answer to held segments, in one write."""
        k = ctypes.c_uint32(0)
        c = self.kick_config_map.Leaf()
        if src4:
            c.src4 = int.from_bytes(ipaddress.IPv4Address(src4).packed, "little")
        if src6:
            words = struct.unpack("<4I", ipaddress.IPv6Address(src6).packed)
            for i, w in enumerate(words):
                c.src6.w[i] = w
        c.interval_ms = interval_ms
        c.budget = budget
        self.kick_config_map[k] = c

    def kick_config(self) -> tuple[str | None, str | None, int, int]:
        """(src4, src6, interval_ms, budget) as written."""
        c = self.kick_config_map[ctypes.c_uint32(0)]
        src4 = (str(ipaddress.IPv4Address(int(c.src4).to_bytes(4, "little")))
                if c.src4 else None)
        w = [int(x) for x in c.src6.w]
        src6 = str(ipaddress.IPv6Address(struct.pack("<4I", *w))) if any(w) else None
        return src4, src6, int(c.interval_ms), int(c.budget)

    def kick_stats(self, tunnel_id: int) -> tuple[int, int]:
        """(kicked, limited) of one tunnel since the data path was loaded."""
        s = self.kick_stats_map[self._tkey(tunnel_id)]
        return int(s.kicked), int(s.limited)

    def kicks_sent(self, tunnel_id: int) -> tuple[int, int]:
        """(kicked, repaired) of one tunnel, in one read: ICMPs sent, and of them the extra
        answers (a second one undoing a lost revert, or the burst answering the first held
        segment after a silence: kick.h)."""
        s = self.kick_stats_map[self._tkey(tunnel_id)]
        return int(s.kicked), int(s.repaired)

    def kick_counts(self) -> dict[int, tuple[int, int]]:
        """(kicked, limited) by tunnel id, tunnels without kicks left out: one batch read
        of the array (``show vpn-context`` of 1,000 tunnels read it one entry at a time)."""
        keys, values, n, ksz, vsz = self._batch(self.kick_stats_map)
        ids = memoryview(keys).cast("B")[: n * ksz].cast("I")
        ks = self._kick_stats
        k, lim = ks.index("kicked"), ks.index("limited")
        return {ids[i]: (row[k], row[lim]) for i, row in enumerate(
            ks.struct.iter_unpack(memoryview(values).cast("B")[: n * vsz]))
            if row[k] or row[lim]}

    def set_kick(self, tunnel_id: int, on: bool) -> None:
        """Answer the tunnel's held segments with an ICMP unreachable (one write; the other
        fields of the control word keep their value)."""
        def change(t: Any) -> None:
            t.flags = (t.flags | TF_KICK) if on else (t.flags & ~TF_KICK)

        self._change_word(tunnel_id, change)

    def kick_enabled(self, tunnel_id: int) -> bool:
        return bool(self._word(tunnel_id).flags & TF_KICK)

    def set_state(self, tunnel_id: int, up: bool) -> None:
        self.set_tunnel(tunnel_id, up=up)

    def bump_generation(self, tunnel_id: int) -> int:
        """Teardown: every flow bound to the tunnel becomes stale, in one write.
        Returns the new generation."""
        def change(t: Any) -> None:
            t.generation = (t.generation + 1) & 0xFFFFFFFF

        return int(self._change_word(tunnel_id, change).generation)

    def pin(self, tunnel_id: int) -> None:
        """Preserve the tunnel's TCP flows while it is down (one write)."""
        self.set_tunnel(tunnel_id, preserve=True)

    def release(self, tunnel_id: int) -> None:
        """Stop preserving: held flows are dropped on their next packet (one write)."""
        self.set_tunnel(tunnel_id, preserve=False)

    def tunnel(self, tunnel_id: int) -> DatapathTunnel:
        t = self._word(tunnel_id)
        s = self.tunnel_stats_map[self._tkey(tunnel_id)]
        return DatapathTunnel(tunnel_id, t.state == TUNNEL_UP, t.generation,
                      bool(t.flags & TF_PRESERVE), s.held, s.refused)

    def tunnels(self) -> list[DatapathTunnel]:
        """Tunnels with a non-zero control word or counters."""
        words = self.tunnel_words()
        keys, values, n, ksz, vsz = self._batch(self.tunnel_stats_map)
        ids = memoryview(keys).cast("B")[: n * ksz].cast("I")
        ts = self._tunnel_stats
        h, r = ts.index("held"), ts.index("refused")
        stats = {ids[i]: (row[h], row[r]) for i, row in enumerate(
            ts.struct.iter_unpack(memoryview(values).cast("B")[: n * vsz]))
            if row[h] or row[r]}
        out = []
        for tid in sorted(set(words) | set(stats)):
            gen, up, preserve = words.get(tid, (0, False, False))
            held, refused = stats.get(tid, (0, 0))
            out.append(DatapathTunnel(tid, up, gen, preserve, held, refused))
        return out

    def guard_counts(self) -> dict[int, tuple[int, int]]:
        """The WAN guard's drops by tunnel id: (sent in clear, received in clear); tunnels
        without drops are left out. One batch read of the array."""
        keys, values, n, ksz, vsz = self._batch(self.guard_stats_map)
        ids = memoryview(keys).cast("B")[: n * ksz].cast("I")
        gs = self._guard_stats
        o, n_ = gs.index("out_dropped"), gs.index("in_dropped")
        return {ids[i]: (row[o], row[n_]) for i, row in enumerate(
            gs.struct.iter_unpack(memoryview(values).cast("B")[: n * vsz]))
            if row[o] or row[n_]}

    # -- selectors ---------------------------------------------------------------------
    def selectors(self) -> list[Selector]:
        """Every (local, remote) -> tunnel pair. An LPM entry owns the slots whose
        remote_plen equals its prefix length; other slots are copies from covering
        prefixes (see tunnel.h)."""
        out: list[Selector] = []
        for fam, trie in ((4, self.sel4), (6, self.sel6)):
            for k, v in trie.items():
                remote = ipaddress.ip_network(
                    (from_words([k.remote] if fam == 4 else k.remote, fam), k.prefixlen))
                for slot in v.slot:
                    if (slot.tunnel_id and slot.tunnel_id != self.refuse_id
                            and slot.remote_plen == k.prefixlen):
                        local = ipaddress.ip_network(
                            (from_words([slot.local] if fam == 4 else slot.local, fam),
                             slot.local_plen))
                        out.append(Selector(local, remote, slot.tunnel_id))
        return out

    def add_selector(self, tunnel_id: int, local: str | IPNetwork,
                     remote: str | IPNetwork) -> list[Overflow]:
        """Map traffic between ``local`` (LAN side) and ``remote`` prefixes to a tunnel.
        A tunnel may have several pairs; both prefixes must be of one family.
        Returns the remote prefixes whose pairs did not all fit (see :meth:`_compile`)."""
        if tunnel_id <= 0:
            raise ValueError("selectors map to tunnel ids >= 1 (0 means no tunnel)")
        self._tkey(tunnel_id)
        sel = Selector(ipaddress.ip_network(local), ipaddress.ip_network(remote), tunnel_id)
        if sel.local.version != sel.remote.version:
            raise ValueError(f"{sel.local} and {sel.remote} are not of one family")
        pairs = self._pairs(sel.local.version)
        if sel not in pairs:
            pairs.append(sel)
        refused = self._compile(sel.local.version, pairs)
        self._selectors_changed()
        return refused

    def remove_selector(self, tunnel_id: int, local: str | IPNetwork,
                        remote: str | IPNetwork) -> list[Overflow]:
        sel = Selector(ipaddress.ip_network(local), ipaddress.ip_network(remote), tunnel_id)
        pairs = [s for s in self._pairs(sel.local.version) if s != sel]
        refused = self._compile(sel.local.version, pairs)
        self._selectors_changed()
        return refused

    def replace_selectors(self, selectors: Iterable[Selector]) -> list[Overflow]:
        """Make the tries hold exactly ``selectors`` (every tunnel's), compiling each
        family once: what a resync of many tunnels needs instead of one add per pair.
        Returns the remote prefixes whose pairs did not all fit (their excess is refused)."""
        wanted = list(dict.fromkeys(selectors))
        out: list[Overflow] = []
        for fam in (4, 6):
            out += self._compile(fam, [s for s in wanted if s.local.version == fam])
        self._selectors_changed()
        return out

    def _selectors_changed(self) -> None:
        """Every non-VPN flow is classified again on its next packet: a flow tracked
        outside all tunnels may be covered by one now (see __no_flow in policy.h). After
        the tries are written, never before: a flow created under the new generation must
        have been classified against the new selectors."""
        self.bump_generation(0)

    def _pairs(self, family: int) -> list[Selector]:
        """Every pair of ``family``: as last compiled by this object (refused pairs have no
        slot to be read back from), else as read from the trie (pinned by a predecessor)."""
        if family in self._compiled:
            return list(self._compiled[family])
        return [s for s in self.selectors() if s.local.version == family]

    @staticmethod
    def _sel_key(trie: Any, family: int, r: IPNetwork) -> Any:
        k = trie.Key()
        k.prefixlen = r.prefixlen
        if family == 4:
            k.remote = to_words(r.network_address)[0]
        else:
            for i, w in enumerate(to_words(r.network_address)):
                k.remote[i] = w
        return k

    @staticmethod
    def _sel_leaf(trie: Any, family: int, cover: list[Selector]) -> Any:
        v = trie.Leaf()
        for i, s in enumerate(cover):
            slot = v.slot[i]
            if family == 4:
                slot.local = to_words(s.local.network_address)[0]
            else:
                for j, w in enumerate(to_words(s.local.network_address)):
                    slot.local[j] = w
            slot.local_plen = s.local.prefixlen
            slot.remote_plen = s.remote.prefixlen
            slot.tunnel_id = s.tunnel_id
        return v

    @staticmethod
    def _sel_arrays(trie: Any, family: int,
                    entries: list[tuple[IPNetwork, list[Selector]]]) -> tuple[Any, Any]:
        """The keys and values of ``entries`` as ctypes arrays for a batch write, packed
        with :mod:`struct` in the layouts bcc made from the C (one ctypes field set at a
        time cost ~5 us an entry: a tenth of a resync of 1,000 tunnels)."""
        kl, vl = layout(trie.Key), layout(trie.Leaf)
        words = 1 if family == 4 else 4
        k_plen = kl.index("prefixlen")
        k_addr = kl.index("remote" if words == 1 else "remote[0]")
        slot_at = []  # per slot: index of its first local word, local_plen, remote_plen, id
        for i in range(SEL_SLOTS):
            first = f"slot[{i}].local" + ("" if words == 1 else "[0]")
            slot_at.append((vl.index(first), vl.index(f"slot[{i}].local_plen"),
                            vl.index(f"slot[{i}].remote_plen"),
                            vl.index(f"slot[{i}].tunnel_id")))
        kbuf = bytearray(kl.struct.size * len(entries))
        vbuf = bytearray(vl.struct.size * len(entries))
        kfields = [0] * len(kl.names)
        for n, (r, cover) in enumerate(entries):
            kfields[k_plen] = r.prefixlen
            kfields[k_addr:k_addr + words] = to_words(r.network_address)
            kl.struct.pack_into(kbuf, n * kl.struct.size, *kfields)
            vfields = [0] * len(vl.names)
            # strict: a cover longer than the slots is plan()'s bug, never truncated here
            for (w0, lp, rp, tid), sel in zip(slot_at[:len(cover)], cover, strict=True):
                vfields[w0:w0 + words] = to_words(sel.local.network_address)
                vfields[lp] = sel.local.prefixlen
                vfields[rp] = sel.remote.prefixlen
                vfields[tid] = sel.tunnel_id
            vl.struct.pack_into(vbuf, n * vl.struct.size, *vfields)
        return ((trie.Key * len(entries)).from_buffer(kbuf),
                (trie.Leaf * len(entries)).from_buffer(vbuf))

    def _compile(self, family: int, pairs: list[Selector]) -> list[Overflow]:
        """Rewrite the trie of ``family`` so that each remote prefix R lists the pairs
        whose remote prefix covers R, most specific remote then local first (ties keep
        the order of ``pairs``).

        More pairs than slots for one R never fails the compile (every other tunnel's
        selectors would be lost with it, their tunnels left DOWN). First, local prefixes
        of one tunnel are merged (see :func:`coalesce`): a range selector ``a..b`` or many
        subnets of one CHILD_SA keep working whole. What still does not fit: the first
        ``SEL_SLOTS - 1`` pairs keep their slots and the last slot refuses the local
        prefix that covers all the others, pointing at ``refuse_id``. A packet that one
        of the kept pairs matches gets exactly the tunnel it would get with every pair
        listed (they come first, in the same order); one that a dropped pair matches is
        refused rather than passed as non-VPN traffic -- dropped by the data path, never
        sent in clear -- and so is other traffic from that covering prefix to R (it may
        be wider than the dropped pairs: over-refusing is the failure that leaks
        nothing). The caller logs and counts what is returned."""
        trie = self.sel4 if family == 4 else self.sel6
        entries, overflows = plan(pairs, self.refuse_id)
        if overflows:  # never configured, but make sure: the refusing id is DOWN
            self.set_tunnel(self.refuse_id, up=False, preserve=False)
        self._compiled[family] = list(pairs)
        # What this object last wrote (None: unknown, e.g. pinned by a predecessor): only
        # the entries that changed are written and only the gone ones deleted, without a
        # walk of the trie. Forgotten if a write fails, so the next compile starts afresh.
        prev = self._written.pop(family, None)
        changed = [(r, cover) for r, cover in entries.items()
                   if prev is None or prev.get(r) != tuple(cover)]
        self._write_entries(trie, family, changed)
        if prev is not None:
            for r in prev.keys() - entries.keys():
                with contextlib.suppress(KeyError):
                    del trie[self._sel_key(trie, family, r)]
        else:
            for k in list(trie.keys()):
                fam_addr = from_words([k.remote] if family == 4 else k.remote, family)
                if ipaddress.ip_network((fam_addr, k.prefixlen)) not in entries:
                    del trie[k]
        self._written[family] = {r: tuple(c) for r, c in entries.items()}
        return overflows

    def _write_entries(self, trie: Any, family: int,
                       entries: list[tuple[IPNetwork, list[Selector]]]) -> None:
        """Write trie entries in one batch update where the kernel takes one for LPM tries
        (a resync of 1,000 tunnels wrote 2,000 entries one syscall each: a third of its
        time), else one at a time, each tried (see :meth:`_update_batch`)."""
        if not entries:
            return
        def one_by_one() -> Iterator[tuple[Any, Any]]:
            for r, cover in entries:
                yield self._sel_key(trie, family, r), self._sel_leaf(trie, family, cover)

        if len(entries) > 1 and self._trie_batch is not False:
            keys, values = self._sel_arrays(trie, family, entries)
            took = self._update_batch(trie, keys, values, one_by_one)
            # Never taken, and the writes one by one went through: a kernel without LPM
            # batch updates, not asked again. (A real failure, no memory, fails those
            # writes too and is raised there, leaving the question open.)
            if took or self._trie_batch is None:
                self._trie_batch = took
            return
        self._write_each(trie, one_by_one())

    # -- flows -------------------------------------------------------------------------
    def flow_map(self, family: int) -> Any:
        """The bcc table of ``family``'s flows."""
        return self.flows4 if family == 4 else self.flows6

    @staticmethod
    def _batch(table: Any, chunk: int = 65536) -> tuple[Any, Any, int, int, int]:
        """Every entry of ``table`` with batch lookups: (keys, values, count, key size,
        value size), the arrays as ctypes arrays (one allocation, no object per entry)."""
        from bcc.libbcc import lib

        cap = table.max_entries + 1024  # entries can appear while we read
        keys = (table.Key * cap)()
        values = (table.Leaf * cap)()
        ksz, vsz = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
        in_b, out_b = ctypes.c_uint32(0), ctypes.c_uint32(0)
        total, first = 0, True
        while total < cap:
            cnt = ctypes.c_uint32(min(chunk, cap - total))
            res = lib.bpf_lookup_batch(
                table.map_fd, None if first else ctypes.byref(in_b), ctypes.byref(out_b),
                ctypes.byref(keys, ksz * total), ctypes.byref(values, vsz * total),
                ctypes.byref(cnt))
            err = ctypes.get_errno()
            total += cnt.value
            if res != 0:
                if err == errno.ENOENT:
                    break
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            in_b.value = out_b.value
            first = False
        return keys, values, total, ksz, vsz

    def read_raw(self, family: int, chunk: int = 65536) -> RawFlows:
        """Every flow of one family with batch lookups, as raw ctypes arrays."""
        table = self.flow_map(family)
        keys, values, total, ksz, vsz = self._batch(table, chunk)
        return RawFlows(family, keys, values, total, ksz, vsz, table.Key, table.Leaf)

    def tunnel_words(self) -> dict[int, tuple[int, bool, bool]]:
        """Every tunnel with a non-zero control word: id -> (generation, up, preserve).
        One batch read of the array, decoded without an object per slot (the sweeper and
        the CLI read it often; 4096 slots one by one cost ~10 ms)."""
        keys, values, n, ksz, vsz = self._batch(self.tunnels_map)
        ids = memoryview(keys).cast("B")[: n * ksz].cast("I")
        w = self._tunnel_word
        g, st, fl = w.index("generation"), w.index("state"), w.index("flags")
        rows: Iterable[tuple[int, tuple[int, ...]]] = zip(
            ids, w.struct.iter_unpack(memoryview(values).cast("B")[: n * vsz]), strict=True)
        if self._batching():  # then this thread's batch: the words as it has changed them
            assert self._words is not None
            words = self._words
            rows = itertools.chain(rows, ((tid, w.struct.unpack(bytes(words[tid])))
                                          for tid in self._words_changed))
        out: dict[int, tuple[int, bool, bool]] = {}
        for tid, row in rows:
            gen, state, flags = row[g], row[st], row[fl]
            if gen or state or flags:
                out[tid] = (gen, state == TUNNEL_UP, bool(flags & TF_PRESERVE))
            elif tid in out:  # a word the batch has zeroed
                del out[tid]
        return out

    @staticmethod
    def decode_key(family: int, k: Any) -> FlowKey:
        """A FlowKey from a raw key (ctypes from bcc)."""
        if family == 4:
            a = (from_words([k.addr[0]], 4), from_words([k.addr[1]], 4))
        else:
            a = (from_words(k.addr[0].w, 6), from_words(k.addr[1].w, 6))
        return FlowKey(k.proto, a, (port(k.port[0]), port(k.port[1])))

    @classmethod
    def decode(cls, family: int, k: Any, v: Any) -> Flow:
        """A Flow from a raw key and value (ctypes from bcc)."""
        return decode_value(cls.decode_key(family, k), v)

    def tunnel_ids_of(self, family: int, values: Any, count: int) -> list[int]:
        """The tunnel id of each of the first ``count`` raw values (a :meth:`chunks`
        array), read straight from the bytes: no object per flow."""
        t = self.flow_map(family).Leaf
        off, vsz = t.tunnel_id.offset, ctypes.sizeof(t)
        assert t.tunnel_id.size == 2 and off % 2 == 0 and vsz % 2 == 0, \
            "tunnel_id is an aligned __u16 in flow_types.h"
        words = memoryview(values).cast("B")[: count * vsz].cast("H")
        return words[off // 2::vsz // 2].tolist()

    def tcp_activity(self, tunnel_id: int, since_s: int,
                     give_way: Callable[[], None] | None = None) -> tuple[int, int]:
        """(TCP flows of ``tunnel_id``, those of them forwarded at or after ``since_s``):
        the table walked a batch at a time, only that tunnel's flows unpacked;
        ``give_way`` called before each batch (the daemon's pause for SA events)."""
        total = active = 0
        for fam in (4, 6):
            m = self.flow_map(fam)
            vl = layout(m.Leaf)
            last_i = vl.index("last_s")
            poff, ksz, vsz = m.Key.proto.offset, ctypes.sizeof(m.Key), ctypes.sizeof(m.Leaf)
            off = m.Leaf.tunnel_id.offset
            want = tunnel_id.to_bytes(2, sys.byteorder)
            for keys, values, n in self.chunks(fam, 65536):
                if give_way is not None:
                    give_way()
                kb = memoryview(keys).cast("B")
                vb = memoryview(values).cast("B")
                # the ids as one bytes object, 2 bytes a flow: found by bytes.find (C),
                # so only this tunnel's flows cost Python work
                ids = memoryview(values).cast("B")[: n * vsz].cast("H")[off // 2::vsz // 2]
                raw_ids = ids.tobytes()
                pos = raw_ids.find(want)
                while pos >= 0:
                    if pos % 2:  # straddles two ids
                        pos = raw_ids.find(want, pos + 1)
                        continue
                    i = pos // 2
                    pos = raw_ids.find(want, pos + 2)
                    if kb[i * ksz + poff] != 6:
                        continue
                    total += 1
                    active += vl.struct.unpack_from(vb, i * vsz)[last_i] >= since_s
        return total, active

    def decode_raw(self, family: int, key: bytes, value: bytes) -> Flow:
        """A Flow from the bytes of a key and a value of ``family``'s map."""
        t = self.flow_map(family)
        return self.decode(family, t.Key.from_buffer_copy(key), t.Leaf.from_buffer_copy(value))

    def chunks(self, family: int, chunk: int = 4096) -> Iterator[tuple[Any, Any, int]]:
        """The flows of ``family`` a batch lookup at a time: (keys, values, count), the same
        two ctypes arrays of ``chunk`` entries refilled each time (use them before the
        next). What walks the table without holding it whole in memory: at 1M flows a
        whole read is ~70 MB of arrays. Entries created or removed during the walk may be
        seen or not, as with any walk of a live hash."""
        from bcc.libbcc import lib

        table = self.flow_map(family)
        keys, values = (table.Key * chunk)(), (table.Leaf * chunk)()
        in_b, out_b = ctypes.c_uint32(0), ctypes.c_uint32(0)
        first = True
        while True:
            cnt = ctypes.c_uint32(chunk)
            res = lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(in_b),
                                       ctypes.byref(out_b), keys, values, ctypes.byref(cnt))
            err = ctypes.get_errno()
            if res != 0 and err != errno.ENOENT:
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            if cnt.value:
                yield keys, values, cnt.value
            if res != 0:  # ENOENT: that was the last of them
                return
            in_b.value = out_b.value
            first = False

    def flows(self, family: int | None = None) -> Iterator[Flow]:
        """Every flow, decoded, a chunk at a time (see :meth:`chunks`)."""
        for fam in (4, 6) if family is None else (family,):
            for keys, values, n in self.chunks(fam):
                for i in range(n):
                    yield self.decode(fam, keys[i], values[i])

    def tunnel_ids_in_use(self) -> set[int]:
        """Tunnel ids that at least one flow carries (one batch read per family; the ids
        are read straight from the value bytes, no object per flow)."""
        out: set[int] = set()
        for fam in (4, 6):
            raw = self.read_raw(fam)
            off = raw.value_type.tunnel_id.offset
            assert raw.value_type.tunnel_id.size == 2, "tunnel_id is a __u16 in flow_types.h"
            mv = memoryview(raw.values).cast("B")[: raw.count * raw.value_size]
            lo = bytes(mv[off::raw.value_size])
            hi = bytes(mv[off + 1::raw.value_size])
            if sys.byteorder == "big":
                lo, hi = hi, lo
            out |= {a | b << 8 for a, b in set(zip(lo, hi, strict=True))}
        return out

    def reset_tunnel_stats(self, tunnel_id: int) -> None:
        """Zero a tunnel's counters (an id handed to a new tunnel starts from zero)."""
        k = self._tkey(tunnel_id)
        self.tunnel_stats_map[k] = self.tunnel_stats_map.Leaf()

    def flow_count(self) -> int:
        return self.read_raw(4).count + self.read_raw(6).count

    def encode_key(self, key: FlowKey) -> Any:
        table = self.flow_map(key.family)
        k = table.Key()
        for i in (0, 1):
            if key.family == 4:
                k.addr[i] = to_words(key.addr[i])[0]
            else:
                for j, w in enumerate(to_words(key.addr[i])):
                    k.addr[i].w[j] = w
            k.port[i] = socket.htons(key.port[i])
        k.proto = key.proto
        return k

    def get_flow(self, key: FlowKey) -> Flow | None:
        table = self.flow_map(key.family)
        k = self.encode_key(key)
        try:
            v = table[k]
        except KeyError:
            return None
        return self.decode(key.family, k, v)

    def delete_keys(self, family: int, keys: Any, count: int) -> int:
        """Delete ``count`` raw keys (a ctypes array) in one batch; keys that are
        already gone are skipped. Returns how many were deleted."""
        from bcc.libbcc import lib

        if count == 0:
            return 0
        table = self.flow_map(family)
        cnt = ctypes.c_uint32(count)
        if lib.bpf_delete_batch(table.map_fd, ctypes.byref(keys), ctypes.byref(cnt)) == 0:
            return count
        # ENOENT stops the batch at a key another actor removed: go one by one
        deleted = cnt.value
        ksz = ctypes.sizeof(table.Key)
        for i in range(deleted, count):
            k = table.Key.from_buffer_copy(bytes(memoryview(keys).cast("B")[i * ksz:(i + 1) * ksz]))
            if lib.bpf_delete_elem(table.map_fd, ctypes.byref(k)) == 0:
                deleted += 1
        return deleted

    def delete_flow(self, key: FlowKey) -> bool:
        table = self.flow_map(key.family)
        try:
            del table[self.encode_key(key)]
        except KeyError:
            return False
        return True

    def clear_flows(self) -> int:
        """Delete every flow (batch read + batch delete; bcc's clear() is quadratic on a
        big hash because every get_next_key after a delete restarts the walk)."""
        n = 0
        for fam in (4, 6):
            counted = self.nonvpn_counted(fam)
            raw = self.read_raw(fam)
            n += self.delete_keys(fam, raw.keys, raw.count)
            self.sync_nonvpn(fam, counted, 0)
        return n

    # -- non-VPN flow budget -----------------------------------------------------------
    def _nv(self, slot: int, family: int) -> int:
        return int(self.nonvpn_map[ctypes.c_uint32(slot + (family == 6))].value)

    def _nv_set(self, slot: int, family: int, value: int) -> None:
        self.nonvpn_map[ctypes.c_uint32(slot + (family == 6))] = ctypes.c_int64(value)

    def nonvpn_counted(self, family: int) -> int:
        """The data path's running count of non-VPN flow creations minus removals."""
        return self._nv(NV_COUNT4, family)

    def nonvpn_flows(self, family: int) -> int:
        """Non-VPN flows of ``family`` as the data path counts them for the budget."""
        return self._nv(NV_COUNT4, family) - self._nv(NV_OFFSET4, family)

    def nonvpn_limit(self, family: int) -> int:
        """Most non-VPN flows tracked in ``family``'s table; 0 = no budget."""
        return self._nv(NV_LIMIT4, family)

    def set_nonvpn_limit(self, family: int, limit: int) -> None:
        self._nv_set(NV_LIMIT4, family, max(0, limit))

    def sync_nonvpn(self, family: int, counted_before: int, present: int) -> None:
        """Correct the data path's non-VPN count to ``present`` flows (a recount made
        after reading ``counted_before`` = :meth:`nonvpn_counted`). Only the sweeper
        calls this: the offset slot has one writer, the count slot another (the data
        path's atomic adds), so no write of ours loses one of its updates.

        The recount is not a snapshot of the same instant as ``counted_before``: a flow
        the data path creates between the two reads is counted twice until the next
        sweep (the budget errs towards leaving room for VPN flows), one it removes there
        once too few. Either error lasts one sweep interval; nothing accumulates."""
        self._nv_set(NV_OFFSET4, family, counted_before - present)

    # -- counters ----------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Per-CPU counters summed: every verdict reason and the extra stats, by name."""
        out = {}
        for r in Reason:
            out[r.name] = int(self.counters_map.sum(ctypes.c_uint32(r.value)).value)
        for s in Stat:
            out[s.name] = int(self.counters_map.sum(ctypes.c_uint32(s.value)).value)
        return out

    def reset_counters(self) -> None:
        for i in range(STAT_MAX):
            self.counters_map[ctypes.c_uint32(i)] = self.counters_map.Leaf(
                *([0] * len(self.counters_map[ctypes.c_uint32(i)])))

    # -- events ------------------------------------------------------------------------
    def _on_event(self, _ctx: Any, data: Any, _size: int) -> int:
        self._pending.append(self._decode_event(data))
        # 0: go on. bcc turns what a callback returns into the int libbpf wants, and makes
        # None 0 by catching int(None)'s TypeError -- an exception a record otherwise.
        return 0

    def read_events(self, timeout_ms: int = 0) -> list[Event]:
        """Events from the ring buffer: demand on a down tunnel and map full (both
        rate-limited per tunnel), flows removed on the packet path. ``timeout_ms`` 0 does
        not wait."""
        if not self._ring_open:
            self.bpf[b"fp_events"].open_ring_buffer(self._on_event)
            self._ring_open = True
        if timeout_ms:  # then what came without a wakeup (removed-flow records) too
            self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()
        out, self._pending = self._pending, []
        return out

    def on_events(self, callback: Callable[[Event], None], timeout_ms: int = 100) -> None:
        """Poll once and hand each event to ``callback``."""
        for e in self.read_events(timeout_ms):
            callback(e)
