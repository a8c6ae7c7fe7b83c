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

/*
 * Branch hints for the established-flow path: clang lays the hinted-cold blocks out of
 * line, so the path every forwarded packet takes is straight-line code (measured with
 * kernel.bpf_stats_enabled on the forwarding benchmark: -4 ns per packet).
 */
#define fp_likely(x) __builtin_expect(!!(x), 1)
#define fp_unlikely(x) __builtin_expect(!!(x), 0)

/* struct fp_ctx - per-packet context shared by the helpers below. */
struct fp_ctx {
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
		return tunnel_classify(c->p.family, c->p.src, c->p.dst);
	return tunnel_classify(c->p.family, c->p.dst, c->p.src);
}

/**
 * __refuse - drop for a tunnel that is not up, count it, and signal demand so that the
 * control plane can bring the tunnel up (rate-limited).
 */
static __always_inline int __refuse(struct fp_ctx *c, __u16 tid, __u32 reason)
{
	struct tunnel_stats *st = tunnel_stats_get(tid);

	if (st) {
		if (reason == FP_R_DROP_HELD)
			__sync_fetch_and_add(&st->held, 1);
		else
			__sync_fetch_and_add(&st->refused, 1);
		event_emit(FP_EV_DEMAND, tid, &c->p, &c->k, 0, &st->last_demand_ns, c->now_ns,
			   c->event_interval_ms);
	}
	return verdict(reason);
}

/* __remove - delete a flow on the packet path and hand its record to user space. */
static __always_inline void __remove(struct fp_ctx *c, const struct flow_value *old)
{
	struct flow_value copy = *old;	/* the element may be reused once deleted */

	flow_delete(&c->p, &c->k);
	count_stat(FP_S_STALE_REMOVED);
	event_emit(FP_EV_FLOW_REMOVED, copy.tunnel_id, &c->p, &c->k, &copy, 0, c->now_ns, 0);
}

/* __untracked - a packet that is not a flow: classify by addresses only. */
static __always_inline int __untracked(struct fp_ctx *c)
{
	__u16 tid = __classify(c);

	if (tunnel_up(tid, tunnel_get(tid)))
		return verdict(FP_R_PASS_UNTRACKED);
	return __refuse(c, tid, FP_R_DROP_TUNNEL_DOWN);
}

/* __related - an ICMP error follows the flow it quotes; it does not refresh it. */
static __always_inline int __related(struct fp_ctx *c)
{
	struct flow_value *v;
	struct tunnel *t;

	flow_key_build(&c->p, &c->k);
	v = flow_lookup(&c->p, &c->k);
	if (!v)
		return __untracked(c);
	t = tunnel_get(v->tunnel_id);
	if (t && v->generation == t->generation && tunnel_up(v->tunnel_id, t))
		return verdict(FP_R_PASS_RELATED);
	if (v->tunnel_id == 0)
		return verdict(FP_R_PASS_RELATED);
	return __refuse(c, v->tunnel_id, FP_R_DROP_TUNNEL_DOWN);
}

/**
 * __create - bind a new flow to tunnel @tid; @stale is the entry it replaces, if any.
 * A full table refuses the flow (never evicts): VPN traffic is dropped, non-VPN traffic
 * passes untracked, both are counted and reported (rate-limited).
 */
static __always_inline int __create(struct fp_ctx *c, __u16 tid, const struct tunnel *t,
				    struct flow_value *stale, int pickup, __u32 reason)
{
	struct flow_value v;
	struct tunnel_stats *st;
	int err;

	if (stale) {
		struct flow_value copy = *stale;

		event_emit(FP_EV_FLOW_REMOVED, copy.tunnel_id, &c->p, &c->k, &copy, 0,
			   c->now_ns, 0);
		count_stat(FP_S_STALE_REMOVED);
	}
	flow_init(&v, &c->p, c->k.side, c->dir == FP_DIR_OUT, pickup, tid,
		  t ? t->generation : 0, c->now_s);
	err = flow_store(&c->p, &c->k, &v, stale != 0);
	if (err == 0)
		return verdict(reason);
	if (err == -EEXIST) {
		/* another CPU created it between our lookup and insert: account on it */
		struct flow_value *cur = flow_lookup(&c->p, &c->k);

		if (cur)
			flow_update(cur, &c->p, c->k.side, c->now_s);
		return verdict(FP_R_PASS_FLOW);
	}
	st = tunnel_stats_get(tid);
	if (st) {
		if (tid)
			__sync_fetch_and_add(&st->refused, 1);
		event_emit(FP_EV_MAP_FULL, tid, &c->p, &c->k, 0, &st->last_full_ns, c->now_ns,
			   c->event_interval_ms);
	}
	return verdict(tid ? FP_R_DROP_MAP_FULL : FP_R_PASS_NOTRACK_FULL);
}

/**
 * __no_flow - no flow, or a flow bound under an older generation (@stale).
 */
static __always_inline int __no_flow(struct fp_ctx *c, struct flow_value *stale,
				     const struct fp_config *cfg)
{
	__u16 tid = __classify(c);
	struct tunnel *t = tunnel_get(tid);

	if (!tunnel_up(tid, t)) {
		if (stale)
			__remove(c, stale);
		return __refuse(c, tid, FP_R_DROP_TUNNEL_DOWN);
	}
	if (c->p.proto != IPPROTO_TCP)
		return __create(c, tid, t, stale, 0, tid ? FP_R_PASS_NEW : FP_R_PASS_NONVPN);
	if (tcp_is_syn(&c->p))
		return __create(c, tid, t, stale, 0, tid ? FP_R_PASS_NEW : FP_R_PASS_NONVPN);
	/* flowpin does not police other traffic: a non-VPN flow is picked up anywhere */
	if (tid == 0)
		return __create(c, tid, t, stale, 1, FP_R_PASS_NONVPN);
	if (cfg->pickup_s && cfg->attach_ns &&
	    c->now_ns - cfg->attach_ns < (__u64)cfg->pickup_s * FP_NSEC_PER_SEC)
		return __create(c, tid, t, stale, 1, FP_R_PASS_PICKUP);
	if (stale) {
		__remove(c, stale);
		return verdict(FP_R_DROP_STALE);
	}
	return verdict(FP_R_DROP_NO_CONN);
}

/* __not_ok - the verdict for a packet that is not a tracked tuple (see enum fp_parse). */
static __always_inline int __not_ok(struct fp_ctx *c, int ret)
{
	if (ret == FP_PARSE_NOT_IP)
		return verdict(FP_R_PASS_NOT_IP);
	if (ret == FP_PARSE_MALFORMED)
		return verdict(FP_R_DROP_MALFORMED);
	if (ret == FP_PARSE_LOCAL)
		return verdict(FP_R_PASS_UNTRACKED);
	if (ret == FP_PARSE_UNTRACKED) {
		__builtin_memset(&c->k, 0, sizeof(c->k));
		return __untracked(c);
	}
	return __related(c);
}

/**
 * fp_handle - the verdict for one packet seen on hook @dir.
 */
static __always_inline int fp_handle(struct __sk_buff *skb, __u8 dir)
{
	struct fp_ctx c;
	struct fp_config *cfg;
	struct flow_value *v;
	struct tunnel *t;
	__u32 zero = 0;
	int ret;

	cfg = config.lookup(&zero);
	if (!cfg)
		return verdict(FP_R_DROP_MALFORMED);	/* cannot happen: array of one */
	__builtin_memset(&c.p, 0, sizeof(c.p));
	c.dir = dir;
	c.now_ns = fp_now_ns(cfg);
	c.now_s = c.now_ns / FP_NSEC_PER_SEC;
	c.event_interval_ms = cfg->event_interval_ms;

	ret = parse_packet(skb, &c.p);
	if (fp_unlikely(ret != FP_PARSE_OK))
		return __not_ok(&c, ret);

#ifdef FP_BENCH_VARY_KEY
	{
		__u32 *seq = bench_seq.lookup(&zero);

		if (seq) {
			c.p.tsrc[0] ^= bpf_htonl(*seq);
			*seq += 1;
		}
	}
#endif
	flow_key_build(&c.p, &c.k);
	v = flow_lookup(&c.p, &c.k);
	if (fp_unlikely(!v))
		return __no_flow(&c, 0, cfg);
	t = tunnel_get(v->tunnel_id);
	if (fp_unlikely(!t || v->generation != t->generation))
		return __no_flow(&c, v, cfg);

	if (fp_likely(tunnel_up(v->tunnel_id, t))) {
		/* a SYN on a closed flow opens a new connection on the same tuple */
		if (fp_unlikely(tcp_is_syn(&c.p) && flow_closed(v)))
			return __create(&c, v->tunnel_id, t, v, 0, FP_R_PASS_NEW);
		flow_update(v, &c.p, c.k.side, c.now_s);
		return verdict(v->tunnel_id ? FP_R_PASS_FLOW : FP_R_PASS_NONVPN);
	}
	/* tunnel down: a pinned TCP flow is held, not refreshed; anything else goes */
	if (c.p.proto == IPPROTO_TCP && (t->flags & FP_TF_PRESERVE))
		return __refuse(&c, v->tunnel_id, FP_R_DROP_HELD);
	__remove(&c, v);
	return __refuse(&c, v->tunnel_id, FP_R_DROP_TUNNEL_DOWN);
}

#endif
