/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * kick.h - answer a held TCP segment with an ICMP unreachable (RFC 6069, TCP-LD).
 *
 * While a tunnel is down its pinned TCP flows are held: every segment the LAN sender
 * retransmits is dropped, and its retransmission timer doubles each time, so once the
 * tunnel is back the sender still sleeps for up to its whole backed-off RTO (tens of
 * seconds after a minute's outage). A Linux sender that receives an ICMP "unreachable"
 * quoting the head of its retransmission queue undoes one doubling (tcp_ld_RTO_revert:
 * tcp_v4_err for IPv4 net/host unreachable, tcp_v6_err for ICMPv6 "no route to
 * destination", type 1 code 0 only; "address unreachable" reverts nothing). Answering
 * each held retransmission keeps its RTO near the base, so it sends again within about
 * one RTO of the tunnel coming back. The ICMP error is a soft error: the connection is
 * not aborted (tcp_v4_err/tcp_v6_err set sk_err_soft for established sockets).
 *
 * The answer is built in place from the held segment (which is dropped anyway): the frame
 * is cut to Ethernet + IP + ICMP header + the quoted IP header and 8 bytes of TCP,
 * addressed from the gateway's LAN address to the sender, and redirected out of the
 * interface it came in on, so it never goes near the WAN. Only the outbound hook kicks
 * (the senders of held flows are on the LAN); segments with IPv4 options or IPv6
 * extension headers, or frames with an in-band VLAN tag, are dropped unanswered.
 *
 * A revert can be lost: tcp_v4_err/tcp_v6_err ignore the ICMP while the sender's socket is
 * owned by its application (TcpExtLockDroppedIcmps; e.g. the retransmission timer ran
 * deferred from release_sock and our answer came back before the owner let go). One lost
 * revert doubles that flow's timer for the rest of the outage, and the next kick only undoes
 * the doubling of its own retransmission: the sender then waits twice the base RTO (or
 * more, after more losses) once the tunnel is back. So each flow keeps the shortest gap
 * between its kicks (its base RTO while the outage lasts); a retransmission that comes
 * more than 1.5 gaps after the previous one shows a doubling that was not undone, and is
 * answered twice (a clone of the answer, bpf_clone_redirect): the second ICMP reverts the
 * doubling that was lost. A second ICMP with nothing left to revert is ignored by the
 * sender (icsk_backoff is 0). A gap of FP_KICK_FORGET_NS or more starts a new history
 * (another outage).
 *
 * The first held segment of an outage can come from a sender that is already several
 * doublings deep (a DPD outage: see __kick_burst); it is answered with as many ICMPs as
 * its silence can hold doublings.
 *
 * Bounded: at most one answer (or burst) per flow per interval (fp_kick_last*, LRU), and at
 * most budget ICMPs per second in all (fp_kick_budget; each ICMP counts). The interval is
 * kept well under the kernel's minimum RTO (200 ms; default 100 ms), so timing jitter
 * never costs a retransmission its answer. The check-then-store of both is not atomic:
 * CPUs racing may each send one more, as events.h accepts for its rate limits.
 *
 * Checksums: the new headers' checksums are computed here in full. A frame that arrived
 * with CHECKSUM_PARTIAL (a veth from a local sender) keeps that state: the receiver then
 * trusts it, as it trusts every frame of that veth; a physical NIC never hands a single
 * received segment up as CHECKSUM_PARTIAL.
 */
#ifndef FLOWPIN_KICK_H
#define FLOWPIN_KICK_H

#include "flow_types.h"
#include "maps.h"
#include "parse.h"
#include "flow.h"

#define FP_KICK4_LEN (FP_ETH_HLEN + 20 + 8 + 28)	/* 70: quotes IP header + 8 bytes */
#define FP_KICK6_LEN (FP_ETH_HLEN + 40 + 8 + 48)	/* 110 */

static __always_inline __u16 __csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return ~csum & 0xffff;
}

/* A gap this long between two kicks of a flow belongs to another outage: start anew. */
#define FP_KICK_FORGET_NS (10ULL * FP_NSEC_PER_SEC)
/* At most this many ICMPs answer one held segment (the first of an outage: see below). */
#define FP_KICK_BURST_MAX 8

/*
 * __kick_burst - ICMPs for the first held segment of an outage from a flow that had been
 * silent for @silent_s seconds (since it last passed). A sender that saw no answer for a
 * while -- a DPD outage: until dead-peer detection deletes the SA its retransmissions go
 * into the tunnel and are lost unanswered -- is several doublings deep by the time its
 * segment is first held, and one answer undoes only one of them. Its gap since the
 * previous retransmission is base RTO << (backoff - 1), base RTO >= 200 ms, so it is at
 * most 1 + log2(silence / 200 ms) doublings deep; the second-granular silence is rounded
 * up, since an answer with nothing left to revert is ignored by the sender (icsk_backoff
 * 0). A silence under 2 s: one answer, as always.
 */
static __always_inline int __kick_burst(__u32 silent_s)
{
	__u32 x = (silent_s + 1) * 5;	/* (silence + the second's rounding) / 200 ms */
	int n = 1, i;

	if (silent_s < 2)
		return 1;
#pragma unroll
	for (i = 0; i < FP_KICK_BURST_MAX - 1; i++) {
		if (x > 1) {
			x >>= 1;
			n++;
		}
	}
	return n;
}

/*
 * __kick_allowed - how many ICMPs to answer the held segment with: 0 (the per-flow interval
 * or the global budget says no); for the first of an outage (no kick within
 * FP_KICK_FORGET_NS) the burst its silence calls for; after that 1, or 2 when the flow's
 * gap shows a lost revert (above). Cut to what is left of the budget.
 */
static __always_inline int __kick_allowed(const struct fp_pkt *p, const struct fp_keys *k,
					  const struct fp_kick_config *kc, __u64 now_ns,
					  __u32 silent_s)
{
	__u64 interval = (__u64)kc->interval_ms * 1000000ULL;
	struct fp_kick_state *st, next = { .last_ns = now_ns };
	struct fp_kick_budget *b;
	__u32 zero = 0;
	int n = __kick_burst(silent_s);	/* unless a kick of this outage came before */

	if (p->family == 4)
		st = fp_kick_last4.lookup((struct fp_flow_key4 *)&k->k4);
	else
		st = fp_kick_last6.lookup((struct fp_flow_key6 *)&k->k6);
	if (st) {
		__u64 gap = now_ns - st->last_ns;

		if (gap < interval)
			return 0;
		if (gap < FP_KICK_FORGET_NS) {
			next.gap_ns = st->gap_ns && st->gap_ns < gap ? st->gap_ns : gap;
			n = st->gap_ns && gap * 2 > st->gap_ns * 3 ? 2 : 1;
		}
	}
	b = fp_kick_budget.lookup(&zero);
	if (!b)
		return 0;
	if (now_ns - b->window_ns >= FP_NSEC_PER_SEC) {
		b->window_ns = now_ns;
		b->used = 0;
	}
	if (b->used >= kc->budget)
		return 0;
	if (b->used + n > kc->budget)
		n = kc->budget - b->used;
	__sync_fetch_and_add(&b->used, n);
	if (p->family == 4)
		fp_kick_last4.update((struct fp_flow_key4 *)&k->k4, &next);
	else
		fp_kick_last6.update((struct fp_flow_key6 *)&k->k6, &next);
	return n;
}

/* __kick4 - rewrite @skb into an ICMP host unreachable to its sender; 0 on success. */
static __always_inline int __kick4(struct __sk_buff *skb, const struct fp_kick_config *kc)
{
	__u8 b[FP_KICK4_LEN + 2] = {};
	__u8 mac[14];
	__u16 csum;

	if (bpf_skb_load_bytes(skb, 0, mac, 14) < 0 || mac[12] != 0x08 || mac[13] != 0x00)
		return -1;
	if (bpf_skb_load_bytes(skb, FP_ETH_HLEN, b + 42, 28) < 0 || b[42] != 0x45)
		return -1;
	__builtin_memcpy(b, mac + 6, 6);	/* to the hop that sent it */
	__builtin_memcpy(b + 6, mac, 6);	/* from the address it was sent to: ours */
	b[12] = 0x08;
	b[14] = 0x45;
	b[15] = 0xc0;				/* DSCP CS6, as the kernel's ICMP */
	b[17] = 20 + 8 + 28;			/* total length */
	b[22] = 64;				/* TTL */
	b[23] = IPPROTO_ICMP;
	__builtin_memcpy(b + 26, &kc->src4, 4);
	__builtin_memcpy(b + 30, b + 42 + 12, 4);	/* the quoted packet's source */
	b[34] = 3;				/* destination unreachable */
	b[35] = 1;				/* host unreachable */
	csum = __csum_fold(bpf_csum_diff(0, 0, (void *)(b + 14), 20, 0));
	__builtin_memcpy(b + 24, &csum, 2);
	csum = __csum_fold(bpf_csum_diff(0, 0, (void *)(b + 34), 36, 0));
	__builtin_memcpy(b + 36, &csum, 2);
	if (bpf_skb_change_tail(skb, FP_KICK4_LEN, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, 0, b, FP_KICK4_LEN, 0) < 0 ? -1 : 0;
}

/* __kick6 - rewrite @skb into an ICMPv6 "no route to destination" to its sender. */
static __always_inline int __kick6(struct __sk_buff *skb, const struct fp_kick_config *kc)
{
	__u8 b[FP_KICK6_LEN + 2] = {};
	__be32 ph[2] = {bpf_htonl(8 + 48), bpf_htonl(IPPROTO_ICMPV6)};
	__u8 mac[14];
	__u32 sum;
	__u16 csum;

	if (bpf_skb_load_bytes(skb, 0, mac, 14) < 0 || mac[12] != 0x86 || mac[13] != 0xdd)
		return -1;
	if (bpf_skb_load_bytes(skb, FP_ETH_HLEN, b + 62, 48) < 0 || b[62 + 6] != IPPROTO_TCP)
		return -1;
	__builtin_memcpy(b, mac + 6, 6);
	__builtin_memcpy(b + 6, mac, 6);
	b[12] = 0x86;
	b[13] = 0xdd;
	b[14] = 0x60;
	b[19] = 8 + 48;				/* payload length */
	b[20] = IPPROTO_ICMPV6;
	b[21] = 64;				/* hop limit */
	__builtin_memcpy(b + 22, &kc->src6, 16);
	__builtin_memcpy(b + 38, b + 62 + 8, 16);	/* the quoted packet's source */
	b[54] = 1;				/* destination unreachable */
	b[55] = 0;				/* no route: the only code tcp_v6_err reverts on */
	/* pseudo header: source and destination (contiguous at 22), length, next header */
	sum = bpf_csum_diff(0, 0, (void *)(b + 22), 32, 0);
	sum = bpf_csum_diff(0, 0, ph, sizeof(ph), sum);
	sum = bpf_csum_diff(0, 0, (void *)(b + 54), 56, sum);
	csum = __csum_fold(sum);
	__builtin_memcpy(b + 56, &csum, 2);
	if (bpf_skb_change_tail(skb, FP_KICK6_LEN, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, 0, b, FP_KICK6_LEN, 0) < 0 ? -1 : 0;
}

static __always_inline int __kick_src_set(const struct fp_kick_config *kc, __u8 family)
{
	if (family == 4)
		return kc->src4 != 0;
	return (kc->src6.w[0] | kc->src6.w[1] | kc->src6.w[2] | kc->src6.w[3]) != 0;
}

/**
 * fp_kick - answer the held segment in @skb (flow of tunnel @tid) with an ICMP unreachable
 * to its sender, within the limits. Returns TC_ACT_REDIRECT when @skb became the answer,
 * 0 when it was left alone (the caller drops it). Counts kicked/limited per tunnel.
 */
static __always_inline int fp_kick(struct __sk_buff *skb, const struct fp_pkt *p,
				   const struct fp_keys *k, __u16 tid, __u64 now_ns,
				   __u32 silent_s)
{
	struct fp_kick_config *kc;
	struct fp_kick_stats *st;
	__u32 zero = 0, id = tid;
	int err, n, i;

	kc = fp_kick_config.lookup(&zero);
	st = fp_kick_stats.lookup(&id);
	if (!kc || !st || !__kick_src_set(kc, p->family))
		return 0;
	n = __kick_allowed(p, k, kc, now_ns, silent_s);
	if (!n) {
		__sync_fetch_and_add(&st->limited, 1);
		return 0;
	}
	err = p->family == 4 ? __kick4(skb, kc) : __kick6(skb, kc);
	if (err)
		return 0;
	/* the repair's second ICMP, or the burst's others: copies of the answer, sent now */
#pragma unroll
	for (i = 1; i < FP_KICK_BURST_MAX; i++) {
		if (i < n && bpf_clone_redirect(skb, skb->ifindex, 0) == 0) {
			__sync_fetch_and_add(&st->kicked, 1);
			__sync_fetch_and_add(&st->repaired, 1);
		}
	}
	__sync_fetch_and_add(&st->kicked, 1);
	return bpf_redirect(skb->ifindex, 0);
}

/*
 * fp_kick_ours - an ICMP error on the inbound hook whose source is the kick's address of
 * its family: our own answer to a held segment, on its way back to the LAN sender. The
 * kernel refuses a packet from outside that claims a local source address, so only the
 * gateway (this file) sends these.
 */
static __always_inline int fp_kick_ours(const struct fp_pkt *p)
{
	struct fp_kick_config *kc;
	__u32 zero = 0;

	kc = fp_kick_config.lookup(&zero);
	if (!kc || !__kick_src_set(kc, p->family))
		return 0;
	if (p->family == 4)
		return p->src[0] == kc->src4;
	return p->src[0] == kc->src6.w[0] && p->src[1] == kc->src6.w[1] &&
	       p->src[2] == kc->src6.w[2] && p->src[3] == kc->src6.w[3];
}

#endif
