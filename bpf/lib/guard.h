/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * guard.h - the WAN guard: the last line of defence against cleartext.
 *
 * Attached on the gateway's WAN-facing interface(s), independent of the LAN-side flow
 * table and of the daemon being alive. Its one rule: a packet whose addresses match a
 * configured tunnel's traffic selectors never crosses the WAN unprotected.
 *
 * - WAN egress (fp_wan_out): protected tunnel traffic leaves the WAN as ESP or
 *   UDP-encapsulated ESP between the gateways' own addresses, so a packet that still
 *   carries LAN addresses of a tunnel (between a local and a remote selector, in either
 *   order) is cleartext that escaped IPsec -- an SA deleted before the daemon noticed,
 *   charon restarting, the daemon stopped, a decrypted packet routed back out because
 *   the LAN interface is gone. It is dropped and counted, whatever the tunnel's state.
 * - WAN ingress (fp_wan_in): the same addresses arriving in clear from the peer (a stock
 *   peer leaking while its SA is gone, or a spoofer) are dropped too -- unless the kernel
 *   decrypted them: under XFRM tunnel mode a decrypted packet re-enters the stack on the
 *   WAN device carrying a security path, which bpf_skb_get_xfrm_state() reveals.
 *   kernel-libipsec hands decrypted packets to its TUN device instead, never to the WAN.
 *
 * ESP (IP protocol 50) and UDP port 500/4500 (IKE, ESP-in-UDP) are exempt before the
 * selector lookup, so selectors that cover the gateways' own addresses (a full-tunnel
 * 0.0.0.0/0) do not block IPsec itself. The selector maps are the flow table's (pinned),
 * so the guard keeps working with the daemon stopped, crashed or failing to start.
 */
#ifndef FLOWPIN_GUARD_H
#define FLOWPIN_GUARD_H

#include "flow_types.h"
#include "maps.h"
#include "tunnel.h"
#include "verdict.h"

#define FP_ETH_P_8021Q 0x8100
#define FP_ETH_P_8021AD 0x88A8
#define FP_GUARD_PULL 64	/* Ethernet + 2 VLAN tags + IPv6 + 8 bytes of UDP */

/* struct fp_guard_pkt - the little the guard needs of a packet. */
struct fp_guard_pkt {
	__u32 src[4];
	__u32 dst[4];
	__u8 family;
	__u8 proto;
};

/**
 * __guard_parse - addresses of an IP packet unless it is IPsec itself.
 * Returns 1 when @g holds addresses to judge, 0 for what the guard lets pass without
 * looking further: non-IP frames, ESP, IKE and ESP-in-UDP. A truncated IP header is
 * judged as 1 with zero addresses: it matches no selector and passes -- it carries no
 * LAN address to leak.
 */
static __always_inline int __guard_parse(struct __sk_buff *skb, struct fp_guard_pkt *g)
{
	void *data, *end, *l3;
	__u16 proto;
	__u8 l4proto;
	int i;

	fp_parse_pull(skb, FP_GUARD_PULL, &data, &end);
	if (data + FP_ETH_HLEN > end)
		return 0;
	proto = ((struct ethhdr *)data)->h_proto;
	l3 = data + FP_ETH_HLEN;
	/* tags the NIC did not strip (no VLAN offload, QinQ): at most two */
#pragma unroll
	for (i = 0; i < 2; i++) {
		if (proto != bpf_htons(FP_ETH_P_8021Q) && proto != bpf_htons(FP_ETH_P_8021AD))
			break;
		if (l3 + 4 > end)
			return 0;
		proto = *(__u16 *)(l3 + 2);
		l3 += 4;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		void *l4;

		if ((void *)(ip + 1) > end)
			return 0;
		g->family = 4;
		g->src[0] = ip->saddr;
		g->dst[0] = ip->daddr;
		l4proto = ip->protocol;
		g->proto = l4proto;
		if (l4proto == IPPROTO_ESP)
			return 0;
		if (l4proto != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x1fff)))
			return 1;
		l4 = l3 + ip->ihl * 4;
		if (l4 + 4 > end)
			return 1;
		proto = bpf_ntohs(*(__u16 *)l4);
		if (proto == 500 || proto == 4500)
			return 0;
		proto = bpf_ntohs(*(__u16 *)(l4 + 2));
		return !(proto == 500 || proto == 4500);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		__u16 *ports = l3 + sizeof(*ip6);

		if ((void *)(ip6 + 1) > end)
			return 0;
		g->family = 6;
		__builtin_memcpy(g->src, &ip6->saddr, 16);
		__builtin_memcpy(g->dst, &ip6->daddr, 16);
		l4proto = ip6->nexthdr;
		g->proto = l4proto;
		if (l4proto == IPPROTO_ESP)
			return 0;
		/* behind extension headers IPsec is judged by its (gateway) addresses */
		if (l4proto != IPPROTO_UDP || (void *)(ports + 2) > end)
			return 1;
		if (ports[0] == bpf_htons(500) || ports[0] == bpf_htons(4500) ||
		    ports[1] == bpf_htons(500) || ports[1] == bpf_htons(4500))
			return 0;
		return 1;
	}
	return 0;
}

/* __guard_decrypted - the kernel's XFRM decrypted this packet (it has a security path). */
static __always_inline int __guard_decrypted(struct __sk_buff *skb)
{
	struct bpf_xfrm_state x = {};

	return bpf_skb_get_xfrm_state(skb, 0, &x, sizeof(x), 0) == 0;
}

/**
 * __guard_drop - count a blocked packet on tunnel @tid and tell user space (rate-limited
 * per tunnel and direction; the counters are exact, the events are samples).
 */
static __always_inline int __guard_drop(struct fp_guard_pkt *g, __u16 tid, __u8 dir)
{
	__u32 k = tid;
	struct fp_guard_stats *st = fp_guard_stats.lookup(&k);
	__u32 zero = 0;
	struct fp_config *cfg = fp_config.lookup(&zero);
	struct fp_event *e;
	__u64 now, *last;

	if (!st)
		return TC_ACT_SHOT;
	if (dir == FP_DIR_OUT) {
		__sync_fetch_and_add(&st->out_dropped, 1);
		last = &st->last_out_ns;
	} else {
		__sync_fetch_and_add(&st->in_dropped, 1);
		last = &st->last_in_ns;
	}
	now = bpf_ktime_get_ns();
	if (cfg && *last && now - *last < (__u64)cfg->event_interval_ms * 1000000ULL)
		return TC_ACT_SHOT;
	*last = now;
	e = fp_events.ringbuf_reserve(sizeof(struct fp_event));
	if (!e) {
		fp_count_stat(FP_S_EVENT_LOST);
		return TC_ACT_SHOT;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->type = dir == FP_DIR_OUT ? FP_EV_GUARD_OUT : FP_EV_GUARD_IN;
	e->tunnel_id = tid;
	e->family = g->family;
	e->proto = g->proto;
	__builtin_memcpy(&e->addr[0], g->src, 16);
	__builtin_memcpy(&e->addr[1], g->dst, 16);
	e->ts_ns = now;
	fp_events.ringbuf_submit(e, 0);
	return TC_ACT_SHOT;
}

/**
 * fp_guard - the verdict of the WAN guard for one packet; @dir is FP_DIR_OUT on the WAN's
 * egress (we send), FP_DIR_IN on its ingress (we receive).
 *
 * Returns TC_ACT_UNSPEC for what is not the guard's business, so other programs or
 * filters after it still decide; TC_ACT_SHOT for tunnel traffic in clear.
 */
static __always_inline int fp_guard(struct __sk_buff *skb, __u8 dir)
{
	struct fp_guard_pkt g = {};
	__u16 tid;

	if (!__guard_parse(skb, &g))
		return TC_ACT_UNSPEC;
	/*
	 * Both orders, on both hooks: on egress, our LAN's packets to the remote LAN and the
	 * remote LAN's packets to ours (decrypted, then routed back out because the LAN
	 * interface is gone: a leak of the peer's traffic); on ingress, the peer's leaks and
	 * packets spoofing our LAN as their source. The likely order first: local is the
	 * source of what we send and the destination of what we get.
	 */
	if (dir == FP_DIR_OUT) {
		tid = fp_tunnel_classify(g.family, g.src, g.dst);
		if (!tid)
			tid = fp_tunnel_classify(g.family, g.dst, g.src);
	} else {
		tid = fp_tunnel_classify(g.family, g.dst, g.src);
		if (!tid)
			tid = fp_tunnel_classify(g.family, g.src, g.dst);
	}
	if (__builtin_expect(tid == 0, 1))
		return TC_ACT_UNSPEC;
	if (dir == FP_DIR_IN && __guard_decrypted(skb))
		return TC_ACT_UNSPEC;
	return __guard_drop(&g, tid, dir);
}

#endif
