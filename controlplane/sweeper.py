"""The sweeper: expires idle flows and removes torn-down ones, and says what it removed.

Expiry is computed from each flow's last-forwarded time with the ASA's timeouts by
default (conn 1:00:00, half-closed 0:10:00, udp 0:02:00, icmp 0:00:02, embryonic 0:00:30,
closed 0:00:10). A held (pinned) flow's last-forwarded time is not refreshed while its
tunnel is down, so it expires by the conn timeout like on the ASA: preserve-vpn-flows works
"within the idle timeout".

Also removed: flows bound under an older generation of their tunnel (teardown), and
flows of a tunnel that is down and not preserving them (UDP and ICMP are never
preserved). Every removed flow is returned as a :class:`RemovedFlow` for the logs.
Non-VPN (tunnel 0) flows of an older generation are not torn down: that generation
moves on every selector change only so that the data path classifies each of them again
on its next packet.

A scan must not fill the table: a non-VPN TCP flow picked up mid-stream (no handshake
seen) that has not yet carried traffic both ways is embryonic, and expires after the
embryonic timeout (30 s), not the conn timeout (1 h). Each sweep also recounts the
non-VPN flows and corrects the data path's count of them (its budget, see
``FlowTable.sync_nonvpn``).

A sweep reads each flow map a batch of lookups at a time, decides in one pass, re-checks
each candidate with a single lookup (a packet may have refreshed or replaced it since the
read: such a flow is kept), and deletes the rest with one batch delete, before reading the
next batch.
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable, Iterable

from controlplane.durations import Timeouts
from controlplane.flow_counts import FlowCounts, merge_tunnel_zero
from controlplane.flow_table import FlowTable, RawFlows
from controlplane.flow_types import ACCT_BYTES_BITS, Side
from controlplane.flows import RemovedFlow
from controlplane.layout import layout, span
from controlplane.ring_events import Event

TORN_DOWN = "Tunnel has been torn down"
_NEVER_WRITTEN = (0, False, False)  # an array slot never written: generation 0, DOWN
SWEEP_BATCH = 65536  # flows read, decided and removed at a time
# Removed flows handed to ``on_removed`` at a time (deleted from the map first). A
# teardown of 100,000 flows kept as one list is ~300,000 objects that the garbage
# collector's full passes walk again and again while they are logged: pauses of 25-300 ms
# that every thread, SA events too, waits out (the GIL). A few thousand at a time stay
# young and are gone before the collector looks at them twice.
REMOVED_BATCH = 512
# The scalars of struct fp_flow_value (bpf/lib/flow_types.h) in the order the sweep loop
# unpacks them; checked against bcc's layout of the compiled C when a Sweeper is made.
FLOW_VALUE_SCALARS = ("generation", "tunnel_id", "side[0]", "side[1]", "seq[0]", "seq[1]",
                      "ack[0]", "ack[1]", "created_s", "last_s", "acct[0]", "acct[1]")
_FIN, _RST, _SYN, _ACK, _PICKUP = Side.FIN, Side.RST, Side.SYN, Side.ACK, Side.PICKUP
_LAN, _OPENER = int(Side.LAN), int(Side.OPENER)


def idle_reason(proto: int, s0: int, s1: int, idle: float, t: Timeouts,
                one_way: bool = False) -> str | None:
    """Why a flow idle for ``idle`` seconds expires now, or None. ``one_way``: a non-VPN
    flow that has carried packets in one direction only (a picked-up one stays embryonic
    until the other side answers: an ACK scan's flows go in 30 s, not an hour)."""
    if proto == 6:
        either, both = s0 | s1, s0 & s1
        if either & _RST:
            return "TCP Reset" if idle >= t.closed else None
        if both & _FIN:
            return "TCP FINs" if idle >= t.closed else None
        if either & _FIN:
            return "half-closed-timeout" if idle >= t.half_closed else None
        established = (either & _PICKUP and not one_way) or (both & _SYN and both & _ACK)
        if established:
            return "conn-timeout" if idle >= t.conn else None
        return "SYN Timeout" if idle >= t.embryonic else None
    if proto in (1, 58):
        return "icmp-timeout" if idle >= t.icmp else None
    return "udp-timeout" if idle >= t.udp else None


class Sweeper:
    """Sweeps one data path's flow maps. ``sweep()`` returns what it removed (or hands it
    to ``on_removed`` a batch at a time)."""

    def __init__(self, table: FlowTable, timeouts: Timeouts | None = None,
                 give_way: Callable[[], None] | None = None,
                 on_removed: Callable[[list[RemovedFlow]], None] | None = None) -> None:
        self.table = table
        # given: each batch of removed flows goes there as soon as it is deleted (the
        # daemon logs it), and sweep() returns [] -- see REMOVED_BATCH
        self.on_removed = on_removed
        # called every few hundred flows: the daemon's pause while an SA event is applied
        self.give_way = give_way or (lambda: None)
        self.timeouts = timeouts or Timeouts()
        self.last_stats: dict[str, int] = {}
        self.counts = FlowCounts()  # per tunnel, as the last sweep left the table
        leaf, key4, key6 = table.flows4.Leaf, table.flows4.Key, table.flows6.Key
        self.value_layout = layout(leaf)
        if self.value_layout.names != FLOW_VALUE_SCALARS:
            raise RuntimeError(f"struct fp_flow_value changed ({self.value_layout.names}): the "
                               "sweeper's unpacking must follow it")
        self.proto_offset = {4: key4.proto.offset, 6: key6.proto.offset}
        # Byte spans of fp_flow_value, from the ctypes: what a re-check compares (bound to
        # the same tunnel generation, same times), when it was created, its tunnel
        self.binding_span = span(leaf, "generation", "tunnel_id")
        self.times_span = span(leaf, "created_s", "last_s")
        self.created_span = span(leaf, "created_s")
        self.tunnel_id_span = span(leaf, "tunnel_id")

    def now_s(self) -> int:
        """The data path's clock: the test override when set, else CLOCK_MONOTONIC."""
        now_ns = self.table.config().now_ns
        if not now_ns:
            now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return now_ns // 1_000_000_000

    def _tunnels(self) -> dict[int, tuple[int, bool, bool]]:
        """Tunnel id -> (generation, up, preserve), read once per sweep. A tunnel id with
        an all-zero control word (never written) reads as generation 0, DOWN."""
        return self.table.tunnel_words()

    def sweep(self, now_s: int | None = None) -> list[RemovedFlow]:
        now = self.now_s() if now_s is None else now_s
        tunnels = self._tunnels()
        removed: list[RemovedFlow] = []
        stats = {"scanned": 0, "candidates": 0, "removed": 0, "kept_changed": 0}
        t = self.timeouts
        # (tunnel id, generation) -> [flows, tcp, bytes out, bytes in] of the flows kept
        counts: dict[tuple[int, int], list[int]] = {}
        mask = (1 << ACCT_BYTES_BITS) - 1
        started, at = time.perf_counter(), time.time()
        for fam in (4, 6):
            counted = self.table.nonvpn_counted(fam)  # before the read: see sync_nonvpn
            nonvpn = swept = 0
            m = self.table.flow_map(fam)
            ksz, vsz = ctypes.sizeof(m.Key), ctypes.sizeof(m.Leaf)
            # A batch at a time, decided and removed before the next: the sweep holds
            # one batch (~4 MB), not the table (~70 MB at 1M flows, every second).
            for keys, values, n in self.table.chunks(fam, SWEEP_BATCH):
                raw = RawFlows(fam, keys, values, n, ksz, vsz, m.Key, m.Leaf)
                stats["scanned"] += n
                vbuf = memoryview(raw.values).cast("B")[: n * vsz]
                kbuf = memoryview(raw.keys).cast("B")[: n * ksz]
                poff = self.proto_offset[fam]
                cands: list[tuple[int, str]] = []
                give_way = self.give_way
                for i, (gen, tid, s0, s1, _q0, _q1, _a0, _a1, _c, last, b0, b1) in enumerate(
                        self.value_layout.struct.iter_unpack(vbuf)):
                    if not i & 511:
                        give_way()
                    tun = tunnels.get(tid, _NEVER_WRITTEN)
                    proto = kbuf[i * ksz + poff]
                    if tid == 0:
                        nonvpn += 1
                    elif gen != tun[0]:
                        cands.append((i, TORN_DOWN))
                        continue
                    if tid and not tun[1] and (proto != 6 or not tun[2]):
                        cands.append((i, TORN_DOWN))
                        continue
                    one_way = tid == 0 and (b0 >> ACCT_BYTES_BITS == 0
                                            or b1 >> ACCT_BYTES_BITS == 0)
                    why = idle_reason(proto, s0, s1, now - last, t, one_way)
                    if why:
                        cands.append((i, why))
                        continue
                    # kept: counted for its tunnel (flow_counts.py), inline for speed
                    c = counts.get((tid, gen))
                    if c is None:
                        c = counts[(tid, gen)] = [0, 0, 0, 0]
                    c[0] += 1
                    c[1] += proto == 6
                    if s0 & _LAN or (not s1 & _LAN and s0 & _OPENER):
                        c[2] += b0 & mask
                        c[3] += b1 & mask
                    else:
                        c[2] += b1 & mask
                        c[3] += b0 & mask
                stats["candidates"] += len(cands)
                for i in range(0, len(cands), REMOVED_BATCH):
                    gone = self._remove(fam, raw, cands[i:i + REMOVED_BATCH], now, stats,
                                        counts)
                    tid_bytes = self.tunnel_id_span
                    zero = bytes(tid_bytes.stop - tid_bytes.start)
                    swept += sum(1 for r in gone if r.raw and r.raw[3][tid_bytes] == zero)
                    if self.on_removed is not None:
                        self.on_removed(gone)
                    else:
                        removed.extend(gone)
            self.table.sync_nonvpn(fam, counted, nonvpn - swept)
        self.last_stats = stats
        self.counts = FlowCounts(merge_tunnel_zero(counts, tunnels.get(0, _NEVER_WRITTEN)[0]),
                                 sum(c[0] for c in counts.values()), at,
                                 time.perf_counter() - started)
        return removed

    def _remove(self, fam: int, raw: object, cands: list[tuple[int, str]], now: int,
                stats: dict[str, int],
                counts: dict[tuple[int, int], list[int]]) -> list[RemovedFlow]:
        """Re-check each candidate against the map (a packet may have refreshed or
        replaced it since the batch read) and batch-delete the unchanged ones; a candidate
        kept is added to ``counts`` (as read)."""
        from bcc.libbcc import lib

        if not cands:
            return []
        table = self.table.flow_map(fam)
        ksz, vsz = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
        kbuf = memoryview(raw.keys).cast("B")  # type: ignore[attr-defined]
        vbuf = memoryview(raw.values).cast("B")  # type: ignore[attr-defined]
        dels = bytearray(len(cands) * ksz)
        out: list[RemovedFlow] = []
        cur = ctypes.create_string_buffer(vsz)
        cur_p = ctypes.addressof(cur)
        fd = table.map_fd
        n = 0
        for j, (i, why) in enumerate(cands):
            if not j & 255:
                self.give_way()
            kb = bytes(kbuf[i * ksz:(i + 1) * ksz])
            if lib.bpf_lookup_elem(fd, kb, cur_p) != 0:
                continue  # already gone (the packet path removed it)
            vb = cur.raw
            old = vbuf[i * vsz:(i + 1) * vsz]
            # generation + tunnel id, created + last forwarded: unchanged since the read?
            bind, times = self.binding_span, self.times_span
            if vb[bind] != old[bind] or vb[times] != old[times]:
                stats["kept_changed"] += 1
                gen, tid, s0, *_rest, b0, b1 = self.value_layout.struct.unpack(old)
                c = counts.setdefault((tid, gen), [0, 0, 0, 0])
                c[0] += 1
                c[1] += kb[self.proto_offset[fam]] == 6
                lan0 = s0 & _LAN or (not _rest[0] & _LAN and s0 & _OPENER)
                mask = (1 << ACCT_BYTES_BITS) - 1
                c[2] += (b0 if lan0 else b1) & mask
                c[3] += (b1 if lan0 else b0) & mask
                continue
            dels[n * ksz:(n + 1) * ksz] = kb
            n += 1
            created = int.from_bytes(vb[self.created_span], sys.byteorder)
            out.append(RemovedFlow(why, float(now - created), raw=(self.table, fam, kb, vb)))
        keys = (table.Key * max(n, 1)).from_buffer(dels)
        stats["removed"] += self.table.delete_keys(fam, keys, n)
        return out


def removed_from_events(events: Iterable[Event]) -> list[RemovedFlow]:
    """Records of the flows the packet path removed itself (stale generation, tunnel
    down and not preserved), from FLOW_REMOVED events."""
    out = []
    for e in events:
        if e.type == "FLOW_REMOVED" and e.flow is not None:
            out.append(RemovedFlow(TORN_DOWN, float(e.ts_ns // 1_000_000_000 - e.flow.created_s),
                                   decoded=e.flow))
    return out


__all__ = ["Sweeper", "idle_reason", "removed_from_events", "TORN_DOWN"]
