/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * tcp_state.h - per-side flow state: creation, update on a forwarded packet, closing.
 *
 * TCP state is kept as the flags each side has sent (SYN, ACK, FIN, RST); the sweeper
 * derives embryonic / established / half-closed / closed from them. We do not validate
 * sequence windows: the endpoints do that; we only remember the last seq/ack each way.
 */
#ifndef FLOWPIN_TCP_STATE_H
#define FLOWPIN_TCP_STATE_H

#include "flow_types.h"
#include "parse.h"

/* __side_bits - the FP_SIDE_* bits a TCP packet with @tcp_flags sets for its sender. */
static __always_inline __u8 __side_bits(__u8 tcp_flags)
{
	__u8 b = 0;

	if (tcp_flags & FP_TCP_SYN)
		b |= FP_SIDE_SYN;
	if (tcp_flags & FP_TCP_ACK)
		b |= FP_SIDE_ACK;
	if (tcp_flags & FP_TCP_FIN)
		b |= FP_SIDE_FIN;
	if (tcp_flags & FP_TCP_RST)
		b |= FP_SIDE_RST;
	return b;
}

/* fp_tcp_is_syn - a connection request: SYN without ACK (and without RST). */
static __always_inline int fp_tcp_is_syn(const struct fp_pkt *p)
{
	return p->proto == IPPROTO_TCP &&
	       (p->tcp_flags & (FP_TCP_SYN | FP_TCP_ACK | FP_TCP_RST)) == FP_TCP_SYN;
}

/* fp_flow_closed - both sides sent FIN, or either sent RST: a new SYN may reuse the tuple. */
static __always_inline int fp_flow_closed(const struct fp_flow_value *v)
{
	__u8 both = v->side[0] | v->side[1];

	return (both & FP_SIDE_RST) || ((v->side[0] & v->side[1]) & FP_SIDE_FIN);
}

/*
 * The per-side helpers take a constant side: a variable index into the stack or a map
 * value makes clang emit pointer arithmetic the verifier rejects.
 */
static __always_inline void __init_side(struct fp_flow_value *v, const struct fp_pkt *p,
					const int s, int lan, int pickup)
{
	__u8 bits = FP_SIDE_OPENER;

	if (p->proto == IPPROTO_TCP) {
		bits |= __side_bits(p->tcp_flags);
		v->seq[s] = p->seq;
		v->ack[s] = p->ack;
	}
	if (pickup)
		bits |= FP_SIDE_PICKUP;
	v->side[s] = bits | (lan ? FP_SIDE_LAN : 0);
	v->side[!s] = lan ? 0 : FP_SIDE_LAN;
	v->acct[s] = (1ULL << FP_ACCT_BYTES_BITS) | p->len;
}

/**
 * fp_flow_init - a new flow for the packet @p sent by key endpoint @side.
 * @lan: the packet came from the LAN (outbound hook).
 * @pickup: created mid-stream, so the handshake was never seen.
 */
static __always_inline void fp_flow_init(struct fp_flow_value *v, const struct fp_pkt *p,
					 __u8 side, int lan, int pickup, __u16 tunnel_id,
					 __u32 generation, __u32 now_s)
{
	__builtin_memset(v, 0, sizeof(*v));
	v->tunnel_id = tunnel_id;
	v->generation = generation;
	v->created_s = now_s;
	v->last_s = now_s;
	if (side)
		__init_side(v, p, 1, lan, pickup);
	else
		__init_side(v, p, 0, lan, pickup);
}

static __always_inline void __update_side(struct fp_flow_value *v, const struct fp_pkt *p,
					  const int s)
{
	if (p->proto == IPPROTO_TCP) {
		__u8 old = v->side[s];
		__u8 bits = old | __side_bits(p->tcp_flags);

		if (bits != old)
			v->side[s] = bits;
		v->seq[s] = p->seq;
		if (p->tcp_flags & FP_TCP_ACK)
			v->ack[s] = p->ack;
	}
	__sync_fetch_and_add(&v->acct[s], (1ULL << FP_ACCT_BYTES_BITS) | p->len);
}

/**
 * fp_flow_update - account a forwarded packet of an existing flow.
 *
 * Counters use one atomic add (packets and bytes packed). The flag, seq/ack and time
 * stores are plain: two CPUs racing on one flow (rare: RSS keeps a flow on one queue)
 * can lose a flag bit or keep the older of two seq numbers; the next packet restores
 * them, and nothing decides a verdict on exact seq values.
 */
static __always_inline void fp_flow_update(struct fp_flow_value *v, const struct fp_pkt *p,
					   __u8 side, __u32 now_s)
{
	if (v->last_s != now_s)
		v->last_s = now_s;
	if (side)
		__update_side(v, p, 1);
	else
		__update_side(v, p, 0);
}

#endif
