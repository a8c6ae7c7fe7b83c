/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * flow_types.h - every struct and constant the data path shares with user space.
 *
 * This is the single definition: controlplane/flow_table.py takes the struct layouts
 * from bcc's generated ctypes (table.Key / table.Leaf) and parses the FP_* #defines and
 * enum values of this file at import time, so there is no second copy to drift.
 * Keep each enumerator on its own line as "NAME = value," (the parser relies on it).
 */
#ifndef FLOWPIN_FLOW_TYPES_H
#define FLOWPIN_FLOW_TYPES_H

/* Sizes; the loader overrides them with -D from its config. */
#ifndef FP_FLOWS4_MAX
#define FP_FLOWS4_MAX 1048576
#endif
#ifndef FP_FLOWS6_MAX
#define FP_FLOWS6_MAX 262144
#endif
#ifndef FP_SELECTORS_MAX
#define FP_SELECTORS_MAX 4096
#endif
#ifndef FP_TUNNELS_MAX
#define FP_TUNNELS_MAX 4096
#endif
#ifndef FP_KICK_FLOWS_MAX
#define FP_KICK_FLOWS_MAX 16384
#endif
/*
 * The event ring, in pages (a power of two). A record is 112 bytes with its header, so
 * 1024 pages (4 MiB) hold ~37,000 records: at the forwarding benchmark's connection rate
 * (tens of thousands of removed flows a second, each one record) that is over a second
 * of the daemon not reading, where 64 pages held a tenth of one.
 */
#ifndef FP_EVENT_RING_PAGES
#define FP_EVENT_RING_PAGES 1024
#endif
#define FP_SEL_SLOTS 4
#define FP_ACCT_BYTES_BITS 40
#define FP_NSEC_PER_SEC 1000000000ULL

/* Sizes user space checks its ctypes (from bcc) against; _Static_assert'ed below. */
#define FP_SIZEOF_FLOW_KEY4 16
#define FP_SIZEOF_FLOW_KEY6 40
#define FP_SIZEOF_FLOW_VALUE 48
#define FP_SIZEOF_TUNNEL 8
#define FP_SIZEOF_TUNNEL_STATS 32
#define FP_SIZEOF_CONFIG 48
#define FP_SIZEOF_SEL_VALUE4 32
#define FP_SIZEOF_SEL_VALUE6 80
#define FP_SIZEOF_EVENT 104
#define FP_SIZEOF_GUARD_STATS 32
#define FP_SIZEOF_KICK_CONFIG 32
#define FP_SIZEOF_KICK_STATS 24

/* Hook direction: which TC hook of the LAN-facing interface saw the packet. */
enum fp_dir {
	FP_DIR_OUT = 0,	/* clsact ingress: LAN -> tunnel */
	FP_DIR_IN = 1,	/* clsact egress: tunnel -> LAN */
};

/* Tunnel state; a zeroed (never configured) entry reads as DOWN, the safe default. */
enum fp_tunnel_state {
	FP_TUNNEL_DOWN = 0,
	FP_TUNNEL_UP = 1,
};

/* Tunnel flags. */
enum fp_tunnel_flags {
	FP_TF_PRESERVE = 1,	/* hold (pin) TCP flows while the tunnel is down */
	FP_TF_KICK = 2,		/* answer held segments with an ICMP unreachable (kick.h) */
};

/*
 * Per-side flow flags (fp_flow_value.side[i], i = index of the endpoint in the key that
 * sent the packets): TCP flags seen from that side plus who opened the flow.
 */
enum fp_side_flags {
	FP_SIDE_SYN = 1,	/* sent a SYN */
	FP_SIDE_ACK = 2,	/* sent an ACK (a SYN-ACK is SYN|ACK) */
	FP_SIDE_FIN = 4,	/* sent a FIN */
	FP_SIDE_RST = 8,	/* sent a RST */
	FP_SIDE_OPENER = 16,	/* sent the packet that created the flow */
	FP_SIDE_LAN = 32,	/* its packets were seen on the outbound (LAN) hook */
	FP_SIDE_PICKUP = 64,	/* flow created mid-stream (pickup window or non-VPN) */
};

/* Verdict reasons: one per-CPU counter each. PASS_* pass, DROP_* drop. */
enum fp_reason {
	FP_R_PASS_FLOW = 0,		/* existing flow, tunnel up, current generation */
	FP_R_PASS_NEW = 1,		/* new flow created (SYN, UDP, ICMP echo) */
	FP_R_PASS_PICKUP = 2,		/* TCP mid-stream picked up in the pickup window */
	FP_R_PASS_NONVPN = 3,		/* flow of traffic that matches no tunnel */
	FP_R_PASS_RELATED = 4,		/* ICMP error about a tracked flow */
	FP_R_PASS_UNTRACKED = 5,	/* fragment, other protocol, ND: not a flow */
	FP_R_PASS_NOT_IP = 6,		/* ARP and other non-IP frames */
	FP_R_PASS_NOTRACK_FULL = 7,	/* non-VPN, flow table full: pass untracked */
	FP_R_DROP_NO_CONN = 8,		/* TCP without SYN and no flow */
	FP_R_DROP_STALE = 9,		/* TCP without SYN, flow of an older generation */
	FP_R_DROP_HELD = 10,		/* pinned TCP flow held: tunnel down */
	FP_R_DROP_TUNNEL_DOWN = 11,	/* matches a tunnel that is down */
	FP_R_DROP_MAP_FULL = 12,	/* new VPN flow refused: flow table full */
	FP_R_DROP_MALFORMED = 13,	/* truncated or invalid headers */
	FP_R_MAX = 14,
};

/* Extra per-CPU counters after the reasons. */
enum fp_stat {
	FP_S_EVENT_LOST = 14,		/* ring buffer full, event not delivered */
	FP_S_STALE_REMOVED = 15,	/* stale flows removed on the packet path */
	FP_S_NONVPN_UNTRACKED = 16,	/* non-VPN flow not created: non-VPN budget spent */
	FP_S_REMOVED_LOST = 17,		/* of EVENT_LOST: FLOW_REMOVED records (a missing 302014) */
	FP_S_MAX = 18,
};

/* Event types on the ring buffer. */
enum fp_event_type {
	FP_EV_DEMAND = 1,		/* traffic for a down tunnel (rate-limited per tunnel) */
	FP_EV_MAP_FULL = 2,		/* a flow could not be created (rate-limited per tunnel) */
	FP_EV_FLOW_REMOVED = 3,		/* a stale/torn-down flow removed on the packet path */
	FP_EV_GUARD_OUT = 4,		/* WAN guard: tunnel traffic about to leave in clear */
	FP_EV_GUARD_IN = 5,		/* WAN guard: tunnel traffic received in clear */
	FP_EV_NONVPN_BUDGET = 6,	/* non-VPN flows at their budget (rate-limited) */
};

/* fp_config.flags. */
enum fp_config_flags {
	FP_CF_NO_RECLASSIFY = 1,	/* reclassify-vpn off: see __no_flow in policy.h */
};

/*
 * Slots of the fp_nonvpn map (one __s64 each), by family (4: +0, 6: +1). Non-VPN flows may
 * take at most LIMIT entries of their flow table, so that a LAN host scanning the
 * internet cannot fill it and starve new VPN flows. The live count is COUNT - OFFSET:
 * COUNT is written by the data path only (atomic add on create and remove), OFFSET by
 * the sweeper only (it recounts the table every sweep and absorbs the drift of removals
 * made by user space and of races), LIMIT by the loader (0 = no budget). Separate slots,
 * because a user-space write of a slot replaces the whole value. One shared counter with
 * atomic adds rather than per-CPU ones: it moves only when a non-VPN flow is created or
 * removed (never on an established packet), and the budget check must read the total.
 */
enum fp_nonvpn_slot {
	FP_NV_COUNT4 = 0,
	FP_NV_COUNT6 = 1,
	FP_NV_OFFSET4 = 2,
	FP_NV_OFFSET6 = 3,
	FP_NV_LIMIT4 = 4,
	FP_NV_LIMIT6 = 5,
	FP_NV_MAX = 6,
};

/*
 * struct fp_flow_key4 - canonical IPv4 flow key (16 bytes).
 * Endpoint 0 is the lower (address, port) pair, so both directions of a flow give the
 * same key and a packet costs one lookup. ICMP echo uses the echo id as both ports.
 * Zero-filled before use: the padding is part of the hash.
 */
struct fp_flow_key4 {
	__u32 addr[2];		/* network byte order */
	__u16 port[2];		/* network byte order */
	__u8 proto;
	__u8 pad[3];
};

/*
 * struct fp_in6 - an IPv6 address as four words. Two-dimensional arrays are avoided in
 * shared structs: bcc 0.26 turns "__u32 a[2][4]" into a ctypes "c_uint * 2".
 */
struct fp_in6 {
	__u32 w[4];
};

/* struct fp_flow_key6 - canonical IPv6 flow key (40 bytes); same rules as fp_flow_key4. */
struct fp_flow_key6 {
	struct fp_in6 addr[2];
	__u16 port[2];
	__u8 proto;
	__u8 pad[3];
};

/*
 * struct fp_flow_value - one flow (48 bytes; 128 bytes of kernel memory per IPv4 flow).
 * Index [i] of the arrays is the direction sent by key endpoint i.
 * Times are whole seconds of CLOCK_MONOTONIC (u32: 136 years), like the ASA's h:mm:ss.
 * acct[i] packs bytes (low FP_ACCT_BYTES_BITS bits, wraps at 1 TiB) and packets (high
 * 24 bits, wraps at 16.7M) so one atomic add per packet accounts both; a byte carry
 * adds one to the packet field once per TiB. That is the price of 128 bytes per flow.
 */
struct fp_flow_value {
	__u32 generation;	/* tunnel generation the flow was bound under */
	__u16 tunnel_id;	/* 0 = traffic that matches no tunnel */
	__u8 side[2];		/* enum fp_side_flags */
	__u32 seq[2];		/* last TCP sequence number sent by each side */
	__u32 ack[2];		/* last TCP ack number sent by each side */
	__u32 created_s;
	__u32 last_s;		/* last forwarded; not refreshed while held */
	__u64 acct[2];
};

/* struct fp_tunnel - control word of a tunnel, written by user space only (one write). */
struct fp_tunnel {
	__u32 generation;
	__u8 state;		/* enum fp_tunnel_state */
	__u8 flags;		/* enum fp_tunnel_flags */
	__u16 pad;
};

/* struct fp_tunnel_stats - written by the data path only, so user writes never race it. */
struct fp_tunnel_stats {
	__u64 held;		/* packets of held (pinned) flows dropped */
	__u64 refused;		/* other packets dropped for this tunnel (down, map full) */
	__u64 last_demand_ns;	/* rate limit of FP_EV_DEMAND */
	__u64 last_full_ns;	/* rate limit of FP_EV_MAP_FULL */
};

/*
 * struct fp_guard_stats - the WAN guard's drops per tunnel (guard.h). Atomic adds: only
 * cleartext that escaped IPsec lands here, never the forwarding fast path.
 */
struct fp_guard_stats {
	__u64 out_dropped;	/* would have left the WAN in clear */
	__u64 in_dropped;	/* arrived on the WAN in clear (the peer leaked) */
	__u64 last_out_ns;	/* rate limit of FP_EV_GUARD_OUT */
	__u64 last_in_ns;	/* rate limit of FP_EV_GUARD_IN */
};

/*
 * struct fp_config - runtime knobs (array of one entry).
 * The clock: CLOCK_MONOTONIC ns = base_ns + (jiffies - base_jiffies) * ns_per_jiffy, set
 * by the loader from two samples (see clock.h); now_ns overrides it for tests.
 */
struct fp_config {
	__u64 now_ns;		/* test clock: used instead of the real clock when non-zero */
	__u64 attach_ns;	/* when the data path was first attached */
	__u32 pickup_s;		/* pickup window after attach_ns, 0 = strict at once */
	__u32 event_interval_ms; /* min interval between events per tunnel and type */
	__u64 base_ns;		/* CLOCK_MONOTONIC at base_jiffies */
	__u64 base_jiffies;
	__u32 ns_per_jiffy;	/* 1e9 / HZ; 0 = not calibrated: read the coarse clock */
	__u32 flags;		/* enum fp_config_flags */
};

/*
 * struct fp_kick_config - the kick's source addresses and limits (array of one entry,
 * written by user space). A zero source address turns the kick off for that family.
 */
struct fp_kick_config {
	__u32 src4;		/* the gateway's LAN address, network order */
	__u32 interval_ms;	/* at most one kick per flow per interval */
	__u32 budget;		/* at most this many kicks per second in all */
	__u32 pad;
	struct fp_in6 src6;	/* the gateway's LAN IPv6 address */
};

/* struct fp_kick_stats - kicks per tunnel, written by the data path only. */
struct fp_kick_stats {
	__u64 kicked;		/* ICMP unreachables sent to LAN senders of held flows */
	__u64 limited;		/* held segments not answered: per-flow interval or budget */
	__u64 repaired;		/* of kicked: second ICMPs undoing a lost revert (kick.h) */
};

/*
 * struct fp_kick_state - one held flow's kick history (fp_kick_last4/6, LRU): when it was
 * last answered and the shortest gap seen between two answers, which is its sender's base
 * retransmission timeout while the outage lasts.
 */
struct fp_kick_state {
	__u64 last_ns;		/* when this flow was last kicked */
	__u64 gap_ns;		/* shortest gap between two kicks of this outage, 0 = none yet */
};

/* struct fp_kick_budget - the global per-second kick budget (array of one entry). */
struct fp_kick_budget {
	__u64 window_ns;	/* start of the current one-second window */
	__u64 used;		/* kicks sent in it */
};

/* struct fp_clock_sample - one (jiffies, CLOCK_MONOTONIC) pair taken by fp_clock_probe. */
struct fp_clock_sample {
	__u64 jiffies;
	__u64 mono_ns;
};

/* Selectors: LPM key on the remote prefix; the value lists local prefixes to check. */
struct fp_sel_key4 {
	__u32 prefixlen;
	__u32 remote;
};

struct fp_sel_key6 {
	__u32 prefixlen;
	__u32 remote[4];
};

/*
 * One (local prefix -> tunnel) candidate. User space compiles the selector pairs: the
 * entry of remote prefix R lists every pair whose remote prefix covers R, most specific
 * first, so the longest remote match alone decides. remote_plen tells the pair's own
 * remote prefix length (the entry "owns" slots whose remote_plen equals its prefixlen).
 */
struct fp_sel_slot4 {
	__u32 local;
	__u8 local_plen;
	__u8 remote_plen;
	__u16 tunnel_id;	/* 0 = empty slot */
};

struct fp_sel_slot6 {
	__u32 local[4];
	__u8 local_plen;
	__u8 remote_plen;
	__u16 tunnel_id;
};

struct fp_sel_value4 {
	struct fp_sel_slot4 slot[FP_SEL_SLOTS];
};

struct fp_sel_value6 {
	struct fp_sel_slot6 slot[FP_SEL_SLOTS];
};

/* struct fp_event - one ring buffer record. */
struct fp_event {
	__u32 type;		/* enum fp_event_type */
	__u16 tunnel_id;
	__u8 family;		/* 4 or 6 */
	__u8 proto;
	struct fp_in6 addr[2];	/* key endpoints (v4 in addr[i].w[0]) */
	__u16 port[2];
	__u32 pad;
	__u64 ts_ns;
	struct fp_flow_value flow;	/* FP_EV_FLOW_REMOVED: the removed flow */
};

_Static_assert(sizeof(struct fp_flow_key4) == FP_SIZEOF_FLOW_KEY4, "fp_flow_key4");
_Static_assert(sizeof(struct fp_flow_key6) == FP_SIZEOF_FLOW_KEY6, "fp_flow_key6");
_Static_assert(sizeof(struct fp_flow_value) == FP_SIZEOF_FLOW_VALUE, "fp_flow_value");
_Static_assert(sizeof(struct fp_tunnel) == FP_SIZEOF_TUNNEL, "fp_tunnel");
_Static_assert(sizeof(struct fp_tunnel_stats) == FP_SIZEOF_TUNNEL_STATS, "fp_tunnel_stats");
_Static_assert(sizeof(struct fp_config) == FP_SIZEOF_CONFIG, "fp_config");
_Static_assert(sizeof(struct fp_sel_value4) == FP_SIZEOF_SEL_VALUE4, "fp_sel_value4");
_Static_assert(sizeof(struct fp_sel_value6) == FP_SIZEOF_SEL_VALUE6, "fp_sel_value6");
_Static_assert(sizeof(struct fp_event) == FP_SIZEOF_EVENT, "fp_event");
_Static_assert(sizeof(struct fp_guard_stats) == FP_SIZEOF_GUARD_STATS, "fp_guard_stats");
_Static_assert(sizeof(struct fp_kick_config) == FP_SIZEOF_KICK_CONFIG, "fp_kick_config");
_Static_assert(sizeof(struct fp_kick_stats) == FP_SIZEOF_KICK_STATS, "fp_kick_stats");

#endif
