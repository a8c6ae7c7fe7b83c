/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * maps.h - every map of the data path, with what it is for.
 *
 * With FP_PIN_DIR defined (the loader does, per instance) the state maps are pinned in
 * bpffs under that directory, so flows outlive the process that loaded them and a new
 * loader reattaches to them. Without it (unit tests, benchmark) they are private.
 *
 * Every map is named fp_*, as Cilium names its maps cilium_*, so a map seen in bpffs or
 * in `bpftool map` says whose it is. The kernel keeps 15 characters of a map's name
 * (BPF_OBJ_NAME_LEN): keep new names within that, or bpftool shows them cut.
 */
#ifndef FLOWPIN_MAPS_H
#define FLOWPIN_MAPS_H

#include "flow_types.h"

#ifdef FP_PIN_DIR
#define FP_MAP(type, k, v, name, max, flags) \
	BPF_TABLE_PINNED(type, k, v, name, max, FP_PIN_DIR "/" #name, flags)
#else
#define FP_MAP(type, k, v, name, max, flags) BPF_F_TABLE(type, k, v, name, max, flags)
#endif

/* IPv4 flows. A plain hash, not LRU: a held flow must never be evicted behind our back. */
FP_MAP("hash", struct fp_flow_key4, struct fp_flow_value, fp_flows4, FP_FLOWS4_MAX, 0);
/* IPv6 flows, same value; a separate map keeps IPv4 keys at 16 bytes instead of 40. */
FP_MAP("hash", struct fp_flow_key6, struct fp_flow_value, fp_flows6, FP_FLOWS6_MAX, 0);
/* IPv4 traffic selectors: remote prefix -> local prefixes and their tunnel ids. */
FP_MAP("lpm_trie", struct fp_sel_key4, struct fp_sel_value4, fp_selectors4, FP_SELECTORS_MAX,
       BPF_F_NO_PREALLOC);
/* IPv6 traffic selectors. */
FP_MAP("lpm_trie", struct fp_sel_key6, struct fp_sel_value6, fp_selectors6, FP_SELECTORS_MAX,
       BPF_F_NO_PREALLOC);
/* Tunnel control words by tunnel id (state, generation, flags); user space writes. */
FP_MAP("array", __u32, struct fp_tunnel, fp_tunnels, FP_TUNNELS_MAX, 0);
/* Tunnel counters and event rate limits by tunnel id; the data path writes. */
FP_MAP("array", __u32, struct fp_tunnel_stats, fp_tunnel_stats, FP_TUNNELS_MAX, 0);
/* WAN guard drops and event rate limits by tunnel id; the guard writes (guard.h). */
FP_MAP("array", __u32, struct fp_guard_stats, fp_guard_stats, FP_TUNNELS_MAX, 0);
/* Per-CPU packet counters by verdict reason (enum fp_reason) and enum fp_stat. */
FP_MAP("percpu_array", __u32, __u64, fp_counters, FP_S_MAX, 0);
/* Runtime configuration, one entry. */
FP_MAP("array", __u32, struct fp_config, fp_config, 1, 0);
/* Non-VPN flow budget: count, sweeper's offset and limit per family (enum fp_nonvpn_slot). */
FP_MAP("array", __u32, __s64, fp_nonvpn, FP_NV_MAX, 0);

/* The kick (kick.h): source addresses and limits, one entry; user space writes. */
FP_MAP("array", __u32, struct fp_kick_config, fp_kick_config, 1, 0);
/* The kick: the global per-second budget, one entry; the data path writes. */
FP_MAP("array", __u32, struct fp_kick_budget, fp_kick_budget, 1, 0);
/* The kick: counters by tunnel id; the data path writes. */
FP_MAP("array", __u32, struct fp_kick_stats, fp_kick_stats, FP_TUNNELS_MAX, 0);
/*
 * The kick: when each flow was last kicked and its shortest gap between kicks, for the
 * per-flow interval and the repair of a lost revert (kick.h). LRU on purpose: this is
 * rate-limit state, not a flow; an evicted entry costs at most one early kick, and the
 * global budget still bounds them all.
 */
FP_MAP("lru_hash", struct fp_flow_key4, struct fp_kick_state, fp_kick_last4, FP_KICK_FLOWS_MAX, 0);
FP_MAP("lru_hash", struct fp_flow_key6, struct fp_kick_state, fp_kick_last6, FP_KICK_FLOWS_MAX, 0);

/* Loader only: fp_clock_probe stores one (jiffies, CLOCK_MONOTONIC) sample here. */
BPF_ARRAY(fp_clock_sample, struct fp_clock_sample, 1);

/* What user space must act on: demand for a down tunnel, map full, flows removed. */
BPF_RINGBUF_OUTPUT(fp_events, FP_EVENT_RING_PAGES);

/* Never used by the programs: exports struct fp_event's layout to user space (ctypes). */
BPF_ARRAY(fp_event_layout, struct fp_event, 1);

#ifdef FP_BENCH_VARY_KEY
/* Benchmark only: per-CPU run counter folded into the key so each run creates a flow. */
BPF_PERCPU_ARRAY(fp_bench_seq, __u32, 1);
#endif

#endif
