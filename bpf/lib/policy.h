/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * policy.h - the per-packet semantics: which packets pass, which are held or refused.
 *
 * Invariant: nothing that matches the selectors of a tunnel passes while that tunnel is
 * not UP (no cleartext). Traffic matching no tunnel (tunnel 0) always passes and is
 * tracked only so that the control plane can reclassify it.
 */
#ifndef FLOWPIN_POLICY_H
#define FLOWPIN_POLICY_H

#include "flow_types.h"
#include "maps.h"
#include "clock.h"
#include "parse.h"
#include "flow.h"
#include "tcp_state.h"
#include "tunnel.h"
#include "verdict.h"
#include "events.h"
#include "kick.h"

/*
 * Branch hints for the established-flow path: clang lays the hinted-cold blocks out of
 * line, so the path every forwarded packet takes is straight-line code (measured with
 * kernel.bpf_stats_enabled on the forwarding benchmark: -4 ns per packet).
 */
#define fp_likely(x) __builtin_expect(!!(x), 1)
#define fp_unlikely(x) __builtin_expect(!!(x), 0)

/* struct fp_ctx - per-packet context shared by the helpers below. */
struct fp_ctx {
	struct __sk_buff *skb;
	struct fp_pkt p;
	struct fp_keys k;
	__u64 now_ns;
	__u32 now_s;
	__u32 event_interval_ms;
	__u8 dir;		/* enum fp_dir */
};

/* __classify - tunnel of the packet's outer addresses; local is the LAN side. */
static __always_inline __u16 __classify(const struct fp_ctx *c)
{
	if (c->dir == FP_DIR_OUT)
		return fp_tunnel_classify(c->p.family, c->p.src, c->p.dst);
	return fp_tunnel_classify(c->p.family, c->p.dst, c->p.src);
}

/**
 * __refuse - drop for a tunnel that is not up, count it, and signal demand so that the
 * control plane can bring the tunnel up (rate-limited).
 */
static __always_inline int __refuse(struct fp_ctx *c, __u16 tid, __u32 reason)
{
	struct fp_tunnel_stats *st = fp_tunnel_stats_get(tid);

	if (st) {
		if (reason == FP_R_DROP_HELD)
			__sync_fetch_and_add(&st->held, 1);
		else
			__sync_fetch_and_add(&st->refused, 1);
		fp_event_emit(FP_EV_DEMAND, tid, &c->p, &c->k, 0, &st->last_demand_ns, c->now_ns,
			      c->event_interval_ms);
	}
	return fp_verdict(reason);
}

/* __nonvpn_slot - the fp_nonvpn map's value at @slot for @family (see enum fp_nonvpn_slot). */
static __always_inline __s64 *__nonvpn_slot(__u32 slot, __u8 family)
{
	__u32 k = slot + (family == 6);

	return fp_nonvpn.lookup(&k);
}

/*
 * __nonvpn_room - a new non-VPN flow may be tracked: its family is under its budget.
 * Read without a lock: CPUs creating at once may overshoot by one flow each.
 */
static __always_inline int __nonvpn_room(__u8 family)
{
	__s64 *cnt = __nonvpn_slot(FP_NV_COUNT4, family);
	__s64 *off = __nonvpn_slot(FP_NV_OFFSET4, family);
	__s64 *lim = __nonvpn_slot(FP_NV_LIMIT4, family);

	if (!cnt || !off || !lim || *lim <= 0)
		return 1;
	return *cnt - *off < *lim;
}

/* __nonvpn_add - account a non-VPN flow created (+1) or removed (-1) by the data path. */
static __always_inline void __nonvpn_add(__u8 family, __s64 delta)
{
	__s64 *cnt = __nonvpn_slot(FP_NV_COUNT4, family);

	if (cnt)
		__sync_fetch_and_add(cnt, delta);
}

/* __remove - delete a flow on the packet path and hand its record to user space. */
static __always_inline void __remove(struct fp_ctx *c, const struct fp_flow_value *old)
{
	struct fp_flow_value copy = *old;	/* the element may be reused once deleted */

	fp_flow_delete(&c->p, &c->k);
	if (copy.tunnel_id == 0)
		__nonvpn_add(c->p.family, -1);
	fp_count_stat(FP_S_STALE_REMOVED);
	fp_event_emit(FP_EV_FLOW_REMOVED, copy.tunnel_id, &c->p, &c->k, &copy, 0, c->now_ns, 0);
}

/* __untracked - a packet that is not a flow, judged by the tunnel of its addresses. */
static __always_inline int __untracked(struct fp_ctx *c, __u16 tid)
{
	if (fp_tunnel_up(tid, fp_tunnel_get(tid)))
		return fp_verdict(FP_R_PASS_UNTRACKED);
	return __refuse(c, tid, FP_R_DROP_TUNNEL_DOWN);
}

/**
 * __related - an ICMP error follows the flow it quotes, and it does not refresh it.
 * It is judged by its outer addresses too: what leaves the gateway is the outer packet,
 * so an error between addresses of a tunnel that is down is refused whatever flow it
 * quotes (a tunnel-0 flow, a flow of another tunnel): @outer is the tunnel of the outer
 * addresses.
 */
static __always_inline int __related(struct fp_ctx *c, __u16 outer)
{
	struct fp_flow_value *v;
	struct fp_tunnel *t;

	/* our own answer to a held segment (kick.h), going back to the LAN sender */
	if (c->dir == FP_DIR_IN && fp_kick_ours(&c->p))
		return fp_verdict(FP_R_PASS_RELATED);
	if (!fp_tunnel_up(outer, fp_tunnel_get(outer)))
		return __refuse(c, outer, FP_R_DROP_TUNNEL_DOWN);
	fp_flow_key_build(&c->p, &c->k);
	v = fp_flow_lookup(&c->p, &c->k);
	if (!v)
		return fp_verdict(FP_R_PASS_UNTRACKED);	/* the outer addresses decided */
	t = fp_tunnel_get(v->tunnel_id);
	if (fp_tunnel_up(v->tunnel_id, t) && (v->tunnel_id == 0 || v->generation == t->generation))
		return fp_verdict(FP_R_PASS_RELATED);
	return __refuse(c, v->tunnel_id, FP_R_DROP_TUNNEL_DOWN);
}

/**
 * __create - bind a new flow to tunnel @tid under @gen; @stale is the entry it replaces.
 * A full table refuses the flow (never evicts): VPN traffic is dropped, non-VPN traffic
 * passes untracked, both are counted and reported (rate-limited). A new non-VPN flow
 * beyond the non-VPN budget also passes untracked (each of its packets is then judged
 * by the selectors afresh, so nothing of a tunnel passes on that account).
 */
static __always_inline int __create(struct fp_ctx *c, __u16 tid, __u32 gen,
				    struct fp_flow_value *stale, int pickup, __u32 reason)
{
	struct fp_flow_value v;
	struct fp_tunnel_stats *st;
	int was_nonvpn = stale && stale->tunnel_id == 0;
	int err;

	if (tid == 0 && !was_nonvpn && !__nonvpn_room(c->p.family)) {
		if (stale)
			__remove(c, stale);
		fp_count_stat(FP_S_NONVPN_UNTRACKED);
		st = fp_tunnel_stats_get(0);
		if (st)
			fp_event_emit(FP_EV_NONVPN_BUDGET, 0, &c->p, &c->k, 0, &st->last_full_ns,
				      c->now_ns, c->event_interval_ms);
		return fp_verdict(FP_R_PASS_NOTRACK_FULL);
	}
	if (stale) {
		struct fp_flow_value copy = *stale;

		fp_event_emit(FP_EV_FLOW_REMOVED, copy.tunnel_id, &c->p, &c->k, &copy, 0,
			      c->now_ns, 0);
		fp_count_stat(FP_S_STALE_REMOVED);
	}
	fp_flow_init(&v, &c->p, c->k.side, c->dir == FP_DIR_OUT, pickup, tid, gen, c->now_s);
	err = fp_flow_store(&c->p, &c->k, &v, stale != 0);
	if (err == 0) {
		if (tid == 0 && !was_nonvpn)
			__nonvpn_add(c->p.family, 1);
		else if (tid != 0 && was_nonvpn)
			__nonvpn_add(c->p.family, -1);
		return fp_verdict(reason);
	}
	if (err == -EEXIST) {
		/* another CPU created it between our lookup and insert: account on it */
		struct fp_flow_value *cur = fp_flow_lookup(&c->p, &c->k);

		if (cur)
			fp_flow_update(cur, &c->p, c->k.side, c->now_s);
		return fp_verdict(FP_R_PASS_FLOW);
	}
	st = fp_tunnel_stats_get(tid);
	if (st) {
		if (tid)
			__sync_fetch_and_add(&st->refused, 1);
		fp_event_emit(FP_EV_MAP_FULL, tid, &c->p, &c->k, 0, &st->last_full_ns, c->now_ns,
			      c->event_interval_ms);
	}
	return fp_verdict(tid ? FP_R_DROP_MAP_FULL : FP_R_PASS_NOTRACK_FULL);
}

/**
 * __on_flow - the verdict for a packet of flow @v, current under its tunnel @t.
 * Up: a SYN on a closed flow opens a new connection on the same tuple, anything else is
 * accounted. Down: a pinned TCP flow is held, not refreshed; anything else is removed.
 * A held segment from the LAN may be answered with an ICMP unreachable instead of being
 * dropped silently, when the tunnel asks for it (kick.h): still counted as held.
 */
static __always_inline int __on_flow(struct fp_ctx *c, struct fp_flow_value *v,
				     struct fp_tunnel *t)
{
	int ret;

	if (fp_likely(fp_tunnel_up(v->tunnel_id, t))) {
		if (fp_unlikely(fp_tcp_is_syn(&c->p) && fp_flow_closed(v)))
			return __create(c, v->tunnel_id, t ? t->generation : 0, v, 0,
					v->tunnel_id ? FP_R_PASS_NEW : FP_R_PASS_NONVPN);
		fp_flow_update(v, &c->p, c->k.side, c->now_s);
		return fp_verdict(v->tunnel_id ? FP_R_PASS_FLOW : FP_R_PASS_NONVPN);
	}
	if (c->p.proto == IPPROTO_TCP && t && (t->flags & FP_TF_PRESERVE)) {
		int kicked = 0;

		if (c->dir == FP_DIR_OUT && (t->flags & FP_TF_KICK) &&
		    !(c->p.tcp_flags & FP_TCP_RST) && !fp_flow_closed(v))
			kicked = fp_kick(c->skb, &c->p, &c->k, v->tunnel_id, c->now_ns,
					 c->now_s > v->last_s ? c->now_s - v->last_s : 0);
		ret = __refuse(c, v->tunnel_id, FP_R_DROP_HELD);
		return kicked ? kicked : ret;
	}
	__remove(c, v);
	return __refuse(c, v->tunnel_id, FP_R_DROP_TUNNEL_DOWN);
}

/**
 * __no_flow - no flow, or a flow bound under an older generation (@stale).
 *
 * Tunnel-0 (non-VPN) flows are re-checked here: user space bumps tunnel 0's generation
 * after every selector change, so each tunnel-0 flow comes here once, on its next
 * packet, and is classified against the new selectors. Still outside every tunnel: it
 * keeps its state under the new generation. Now covered by a tunnel: with reclassify-vpn
 * on it is treated as the ASA's reclassify-vpn would treat it (cleared: a TCP packet
 * without SYN is refused, UDP/ICMP start a flow in the tunnel, nothing passes while the
 * tunnel is down); with reclassify-vpn off the connection is not cut but bound to that
 * tunnel as it is, so it passes only while the tunnel is up and is held or refused with
 * it. The established path pays nothing for this: it already reads tunnel 0's control
 * word and compares generations for every tunnel-0 flow (see fp_handle). Measured with
 * `flowpin bench datapath` (3 runs alternating with the code before): an established
 * hit 40-45 ns above the empty program both ways, a new flow within the runs' noise.
 * A tunnel-0 flow that keeps its state (still outside, or bound as it is) goes on as an
 * established one in fp_handle; what comes here is a new flow, a stale one, or a
 * reclassified one. @tid is the tunnel of the packet's addresses, @t its control word,
 * @gen the generation a flow created now is bound under.
 */
static __always_inline int __no_flow(struct fp_ctx *c, struct fp_flow_value *stale,
				     const struct fp_config *cfg, __u16 tid,
				     const struct fp_tunnel *t, __u32 gen)
{
	__u32 reason;
	int pickup = 0;

	if (!fp_tunnel_up(tid, t)) {
		if (stale)
			__remove(c, stale);
		return __refuse(c, tid, FP_R_DROP_TUNNEL_DOWN);
	}
	/* UDP, ICMP and a SYN open a flow; other TCP only where it may be picked up */
	reason = tid ? FP_R_PASS_NEW : FP_R_PASS_NONVPN;
	if (c->p.proto == IPPROTO_TCP && !fp_tcp_is_syn(&c->p)) {
		/* The window is for connections older than flowpin, never for one it tore
		 * down: a teardown bumps the tunnel's generation, and the flow's entry may be
		 * gone already (swept), so generation 0 -- never torn down -- is the test. */
		if (tid && !(cfg->pickup_s && cfg->attach_ns && t && t->generation == 0 &&
			     c->now_ns - cfg->attach_ns < (__u64)cfg->pickup_s * FP_NSEC_PER_SEC)) {
			if (stale) {
				__remove(c, stale);
				return fp_verdict(FP_R_DROP_STALE);
			}
			return fp_verdict(FP_R_DROP_NO_CONN);
		}
		/* flowpin does not police other traffic: a non-VPN flow is picked up anywhere */
		pickup = 1;
		if (tid)
			reason = FP_R_PASS_PICKUP;
	}
	/* one call site: each inlined __create is its events, counters and store again */
	return __create(c, tid, gen, stale, pickup, reason);
}

/**
 * __open_first - a connection request (SYN) on the general path would look the flow up,
 * miss, classify and insert: the insert (BPF_NOEXIST) checks for an entry itself, so for
 * a SYN the lookup that would miss (one kernel call and hash) is left out and the insert
 * goes first. Only when it can succeed with no question left: the tunnel the selectors
 * name is up (tunnel 0: its non-VPN budget has room). Anything else returns -1 and the
 * packet takes the general path, judged as before: an entry already there (-EEXIST: a
 * retransmitted SYN, a closed flow reopened, a stale, held or reclassified flow), a table
 * full (reported there), a tunnel down (refused and demanded there). A successful insert
 * means no entry existed, exactly the case where the general path would have created
 * this same flow (see __no_flow: same generation order, same value). The price moves to
 * a SYN that finds its flow: one failed insert more.
 * Returns the verdict's reason, -1 for the general path (a reason, not a TC verdict: the
 * caller counts it, and -1 is a TC verdict too).
 */
static __always_inline int __open_first(struct fp_ctx *c, __u16 tid, __u32 gen0)
{
	struct fp_tunnel *t = fp_tunnel_get(tid);
	struct fp_flow_value v;

	if (tid) {
		if (!t || t->state != FP_TUNNEL_UP)
			return -1;
		gen0 = t->generation;
	} else if (!__nonvpn_room(c->p.family)) {
		return -1;
	}
	fp_flow_init(&v, &c->p, c->k.side, c->dir == FP_DIR_OUT, 0, tid, gen0, c->now_s);
	if (fp_flow_store(&c->p, &c->k, &v, 0))
		return -1;
	if (tid == 0)
		__nonvpn_add(c->p.family, 1);
	return tid ? FP_R_PASS_NEW : FP_R_PASS_NONVPN;
}

/**
 * fp_handle - the verdict for one packet seen on hook @dir.
 *
 * An established flow's packet is decided without classifying it: parse, one lookup, its
 * tunnel's control word. Every other packet needs the tunnel of its addresses, and there
 * is ONE classification below for all of them (untracked IP, ICMP errors, a SYN, no flow,
 * a flow of an older generation). Likewise one call site for __create in __no_flow, and
 * two for __on_flow: the established path's own, and one for the rest. Everything here
 * is inlined (bcc links no BPF-to-BPF calls), so a helper called from four paths was four
 * copies: each program was 16,800 instructions and its compile (paid at every start)
 * 3.9 s here; now 8,200 and 3.0 s, for the same verdicts and the same cost per packet
 * (python -m bench.newflow_ab [--established]). Sharing the established path's
 * __on_flow too (6,500 instructions, 2.4 s) cost its packets 1-2 ns.
 */
static __always_inline int fp_handle(struct __sk_buff *skb, __u8 dir)
{
	struct fp_ctx c;
	struct fp_config *cfg;
	struct fp_flow_value *v = 0;
	struct fp_tunnel *t;
	__u32 zero = 0, gen0, gen;
	__u16 tid;
	int ret, r;

	cfg = fp_config.lookup(&zero);
	if (!cfg)
		return fp_verdict(FP_R_DROP_MALFORMED);	/* cannot happen: array of one */
	__builtin_memset(&c.p, 0, sizeof(c.p));
	c.skb = skb;
	c.dir = dir;
	c.now_ns = fp_now_ns(cfg);
	c.now_s = c.now_ns / FP_NSEC_PER_SEC;
	c.event_interval_ms = cfg->event_interval_ms;

	ret = fp_parse_packet(skb, &c.p);
	if (fp_unlikely(ret != FP_PARSE_OK)) {
		if (ret == FP_PARSE_NOT_IP)
			return fp_verdict(FP_R_PASS_NOT_IP);
		if (ret == FP_PARSE_MALFORMED)
			return fp_verdict(FP_R_DROP_MALFORMED);
		if (ret == FP_PARSE_LOCAL)
			return fp_verdict(FP_R_PASS_UNTRACKED);
		if (ret == FP_PARSE_UNTRACKED)
			__builtin_memset(&c.k, 0, sizeof(c.k));
		/* untracked IP and ICMP errors: classified below */
	} else {
#ifdef FP_BENCH_VARY_KEY
		__u32 *seq = fp_bench_seq.lookup(&zero);

		if (seq) {
			c.p.tsrc[0] ^= bpf_htonl(*seq);
			*seq += 1;
		}
#endif
		fp_flow_key_build(&c.p, &c.k);
		/* a SYN tries its insert first, classified below (see __open_first) */
		if (!fp_tcp_is_syn(&c.p)) {
			v = fp_flow_lookup(&c.p, &c.k);
			if (fp_likely(v != 0)) {
				t = fp_tunnel_get(v->tunnel_id);
				if (fp_likely(t && v->generation == t->generation))
					return __on_flow(&c, v, t);
			}
		}
	}

	/*
	 * Tunnel 0's generation is read before the selectors: user space bumps it after it
	 * has written them, so a flow created under the new generation was classified
	 * against the new selectors (the empty asm keeps the compiler from reordering).
	 */
	t = fp_tunnel_get(0);
	gen0 = t ? t->generation : 0;
	asm volatile("" ::: "memory");
	tid = __classify(&c);

	if (ret == FP_PARSE_UNTRACKED)
		return __untracked(&c, tid);
	if (ret != FP_PARSE_OK)
		return __related(&c, tid);
	if (fp_tcp_is_syn(&c.p)) {
		r = __open_first(&c, tid, gen0);
		if (r >= 0)
			return fp_verdict(r);
		v = fp_flow_lookup(&c.p, &c.k);
		if (v) {
			t = fp_tunnel_get(v->tunnel_id);
			if (t && v->generation == t->generation)
				goto on_flow;
		}
	}
	/* no flow (v NULL), or a flow bound under an older generation (v stale) */
	t = fp_tunnel_get(tid);
	gen = tid ? (t ? t->generation : 0) : gen0;
	if (v && v->tunnel_id == 0 && (tid == 0 || (cfg->flags & FP_CF_NO_RECLASSIFY))) {
		/* a non-VPN flow after a selector change: still outside, or bound as it is */
		if (tid) {
			__nonvpn_add(c.p.family, -1);
			v->tunnel_id = tid;
		}
		v->generation = gen;
		goto on_flow;
	}
	return __no_flow(&c, v, cfg, tid, t, gen);

on_flow:
	/* one call site for these: inlined, __on_flow is the kick, the create and the
	 * refusals again */
	return __on_flow(&c, v, t);
}

#endif
