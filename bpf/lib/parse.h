/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * parse.h - packet parsing into struct fp_pkt.
 *
 * Every access is bounds-checked against data_end; anything that cannot be parsed into
 * a defined shape returns FP_PARSE_MALFORMED and the caller drops it (a packet we cannot
 * classify could belong to a tunnel: passing it could leak cleartext).
 */
#ifndef FLOWPIN_PARSE_H
#define FLOWPIN_PARSE_H

#include "flow_types.h"

#define FP_ETH_HLEN 14
#define FP_IPV6_MAX_EXT 6	/* extension headers walked before giving up */
#define FP_PULL_LEN 128		/* enough linear data for every header we read */

enum fp_parse {
	FP_PARSE_OK = 0,	/* tracked tuple in pkt (TCP, UDP, ICMP echo) */
	FP_PARSE_RELATED,	/* ICMP error: pkt holds the tuple of the quoted packet */
	FP_PARSE_UNTRACKED,	/* IP, but not a flow: fragment, other protocol, other ICMP */
	FP_PARSE_LOCAL,		/* IPv6 ND/MLD that cannot leave the link: passes */
	FP_PARSE_NOT_IP,
	FP_PARSE_MALFORMED,
};

/* struct fp_pkt - what the verdict logic needs from a packet. */
struct fp_pkt {
	__u32 src[4];		/* outer source (v4 in [0]) */
	__u32 dst[4];		/* outer destination */
	__u32 tsrc[4];		/* tuple source: outer, or inner sender for ICMP errors */
	__u32 tdst[4];
	__u16 sport;		/* tuple ports, network order; echo id for ICMP echo */
	__u16 dport;
	__u8 family;		/* 4 or 6 */
	__u8 proto;		/* tuple protocol */
	__u8 tcp_flags;		/* TCP flags byte */
	__u8 pad;
	__u32 seq;
	__u32 ack;
	__u32 len;		/* skb->len, for accounting */
};

#define FP_TCP_FIN 0x01
#define FP_TCP_SYN 0x02
#define FP_TCP_RST 0x04
#define FP_TCP_ACK 0x10

/**
 * __parse_l4 - read ports (and TCP flags) of a TCP/UDP/ICMP header at @l4.
 * @inner: parsing the packet quoted in an ICMP error; only 8 bytes are guaranteed there,
 *         so TCP flags and the data offset are not checked.
 * Returns FP_PARSE_OK, FP_PARSE_RELATED (outer ICMP error, tuple not yet filled),
 * FP_PARSE_UNTRACKED, FP_PARSE_LOCAL or FP_PARSE_MALFORMED.
 */
static __always_inline int __parse_l4(struct fp_pkt *p, void *l4, void *end, __u8 proto,
				      int inner)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if (inner) {
			if (l4 + 8 > end)
				return FP_PARSE_MALFORMED;
		} else {
			if ((void *)(th + 1) > end)
				return FP_PARSE_MALFORMED;
			/* data offset below 5 or beyond the packet: not a TCP header */
			if (th->doff < 5 || l4 + th->doff * 4 > end)
				return FP_PARSE_MALFORMED;
			p->tcp_flags = ((__u8 *)th)[13];
			p->seq = bpf_ntohl(th->seq);
			p->ack = bpf_ntohl(th->ack_seq);
		}
		p->sport = th->source;
		p->dport = th->dest;
		return FP_PARSE_OK;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return FP_PARSE_MALFORMED;
		p->sport = uh->source;
		p->dport = uh->dest;
		return FP_PARSE_OK;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		__u8 *ic = l4;
		__u8 type;

		if (l4 + 8 > end)
			return FP_PARSE_MALFORMED;
		type = ic[0];
		if (proto == IPPROTO_ICMP) {
			if (type == 8 || type == 0)	/* echo request / reply */
				goto echo;
			/* unreachable, source quench, redirect, time exceeded, param problem */
			if (!inner && (type == 3 || type == 4 || type == 5 || type == 11 ||
				       type == 12))
				return FP_PARSE_RELATED;
			return FP_PARSE_UNTRACKED;
		}
		if (type == 128 || type == 129)
			goto echo;
		if (!inner && type >= 1 && type <= 4)	/* unreach, too big, time, param */
			return FP_PARSE_RELATED;
		if (!inner && ((type >= 130 && type <= 137) || type == 143))
			return FP_PARSE_LOCAL;		/* MLD, ND */
		return FP_PARSE_UNTRACKED;
echo:
		/* the echo id stands for both ports, so request and reply share one key */
		p->sport = *(__u16 *)(ic + 4);
		p->dport = p->sport;
		return FP_PARSE_OK;
	}
	return FP_PARSE_UNTRACKED;
}

/**
 * __parse_ip4 - parse an IPv4 header at @ip into @src/@dst, find L4 start and protocol.
 * Returns FP_PARSE_OK, FP_PARSE_UNTRACKED (non-first fragment) or FP_PARSE_MALFORMED.
 */
static __always_inline int __parse_ip4(void *ip, void *end, __u32 *src, __u32 *dst,
				       void **l4, __u8 *proto)
{
	struct iphdr *iph = ip;

	if ((void *)(iph + 1) > end)
		return FP_PARSE_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return FP_PARSE_MALFORMED;
	if (ip + iph->ihl * 4 > end)
		return FP_PARSE_MALFORMED;
	src[0] = iph->saddr;
	dst[0] = iph->daddr;
	*proto = iph->protocol;
	*l4 = ip + iph->ihl * 4;
	/* a non-first fragment has no L4 header: it is classified by addresses only */
	if (iph->frag_off & bpf_htons(0x1fff))
		return FP_PARSE_UNTRACKED;
	return FP_PARSE_OK;
}

/**
 * __parse_ip6 - parse an IPv6 header and walk up to FP_IPV6_MAX_EXT extension headers.
 * Returns FP_PARSE_OK, FP_PARSE_UNTRACKED (non-first fragment, ESP, too many extension
 * headers) or FP_PARSE_MALFORMED.
 */
static __always_inline int __parse_ip6(void *ip, void *end, __u32 *src, __u32 *dst,
				       void **l4, __u8 *proto)
{
	struct ipv6hdr *ip6 = ip;
	void *cur = ip + sizeof(*ip6);
	__u8 nh;
	int i;

	if ((void *)(ip6 + 1) > end)
		return FP_PARSE_MALFORMED;
	if (ip6->version != 6)
		return FP_PARSE_MALFORMED;
	__builtin_memcpy(src, &ip6->saddr, 16);
	__builtin_memcpy(dst, &ip6->daddr, 16);
	nh = ip6->nexthdr;

#pragma unroll
	for (i = 0; i < FP_IPV6_MAX_EXT; i++) {
		__u8 *eh = cur;

		if (nh == 0 || nh == 43 || nh == 60) {	/* hop-by-hop, routing, dest opts */
			if (cur + 8 > end)
				return FP_PARSE_MALFORMED;
			nh = eh[0];
			cur += (eh[1] + 1) * 8;
			continue;
		}
		if (nh == 44) {				/* fragment header */
			if (cur + 8 > end)
				return FP_PARSE_MALFORMED;
			nh = eh[0];
			if (*(__u16 *)(eh + 2) & bpf_htons(0xfff8))
				return FP_PARSE_UNTRACKED;	/* non-first fragment */
			cur += 8;
			continue;
		}
		if (nh == 51) {				/* AH: length in 4-byte units */
			if (cur + 8 > end)
				return FP_PARSE_MALFORMED;
			nh = eh[0];
			cur += (eh[1] + 2) * 4;
			continue;
		}
		break;
	}
	*proto = nh;
	*l4 = cur;
	if (nh == 0 || nh == 43 || nh == 60 || nh == 44 || nh == 51)
		return FP_PARSE_UNTRACKED;	/* longer chain than we walk */
	return FP_PARSE_OK;
}

/* struct fp_vlan_hdr - an 802.1Q/802.1ad tag as it sits in the frame after the MACs. */
struct fp_vlan_hdr {
	__be16 tci;
	__be16 proto;		/* ethertype of what follows */
};

/* __link_scope6 - @a is link-local unicast (fe80::/10) or multicast of scope <= link. */
static __always_inline int __link_scope6(const __u32 *a)
{
	__u32 w = bpf_ntohl(a[0]);

	return (w & 0xffc00000) == 0xfe800000 ||
	       ((w >> 24) == 0xff && ((w >> 16) & 0xf) <= 2);
}

static __always_inline int __unspecified6(const __u32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

/**
 * __on_link6 - an ND or MLD message (@type) that cannot leave the link, so it may pass
 * whatever the tunnels' states: ND (RFC 4861) with hop limit 255, MLD (RFC 2710, 3810)
 * with hop limit 1, and a source that no router forwards (link-local, or unspecified
 * where the RFC allows it: ND's DAD, an MLDv2 report) or a link-scoped destination.
 * Anything else with these types is judged like any packet, by addresses and tunnel
 * state: a crafted "neighbour advertisement" between a LAN host and a remote host of a
 * tunnel is routable, and would leave the WAN in clear while the tunnel is down.
 */
static __always_inline int __on_link6(const struct ipv6hdr *ip6, const struct fp_pkt *p,
				      __u8 type)
{
	int ll_src = __link_scope6(p->src);

	if (type >= 133 && type <= 137)		/* RS, RA, NS, NA, redirect */
		return ip6->hop_limit == 255 &&
		       (ll_src || __unspecified6(p->src) || __link_scope6(p->dst));
	/* 130-132 MLDv1 query/report/done, 143 MLDv2 report */
	return ip6->hop_limit == 1 &&
	       (ll_src || (type == 143 && __unspecified6(p->src)));
}

/**
 * fp_parse_pull - make the first @len bytes of @skb linear and set @data/@end to its bounds.
 * GSO/paged skbs may keep headers outside the linear area: pull only when they are not
 * linear already (never on small packets).
 */
static __always_inline void fp_parse_pull(struct __sk_buff *skb, __u32 len, void **data,
					  void **end)
{
	__u32 want = skb->len < len ? skb->len : len;

	*data = (void *)(long)skb->data;
	*end = (void *)(long)skb->data_end;
	if (*data + want > *end) {
		bpf_skb_pull_data(skb, want);
		*data = (void *)(long)skb->data;
		*end = (void *)(long)skb->data_end;
	}
}

/**
 * fp_parse_packet - fill @p from the frame in @skb.
 *
 * For an ICMP error the tuple (tsrc/tdst/ports/proto) is the quoted packet's, so the
 * error finds the flow it is about; the outer addresses stay in src/dst for selectors.
 */
static __always_inline int fp_parse_packet(struct __sk_buff *skb, struct fp_pkt *p)
{
	void *data, *end, *l3, *l4 = 0, *inner_l4 = 0;
	struct ethhdr *eth;
	__u8 proto = 0, inner_proto = 0;
	__be16 etype;
	int ret, i;

	fp_parse_pull(skb, FP_PULL_LEN, &data, &end);
	eth = data;
	if ((void *)(eth + 1) > end)
		return FP_PARSE_MALFORMED;
	p->len = skb->len;

	/*
	 * VLAN tags still in the frame (a device without VLAN offload, or the inner tag of
	 * QinQ when the outer one was offloaded into skb->vlan_tci): skip up to two, 802.1ad
	 * or 802.1Q, and judge the packet like an untagged one. An offloaded tag is not in
	 * the data at all, so such frames need nothing here. More tags than that: we cannot
	 * see the addresses, so the frame is dropped rather than passed as "not IP".
	 */
	etype = eth->h_proto;
	l3 = eth + 1;
#pragma unroll
	for (i = 0; i < 3; i++) {
		struct fp_vlan_hdr *vh = l3;

		if (etype != bpf_htons(ETH_P_8021Q) && etype != bpf_htons(ETH_P_8021AD))
			break;
		if (i == 2 || (void *)(vh + 1) > end)
			return FP_PARSE_MALFORMED;
		etype = vh->proto;
		l3 = vh + 1;
	}

	if (etype == bpf_htons(ETH_P_IP)) {
		p->family = 4;
		ret = __parse_ip4(l3, end, p->src, p->dst, &l4, &proto);
	} else if (etype == bpf_htons(ETH_P_IPV6)) {
		p->family = 6;
		ret = __parse_ip6(l3, end, p->src, p->dst, &l4, &proto);
	} else {
		return FP_PARSE_NOT_IP;
	}
	if (ret != FP_PARSE_OK)
		return ret;

	p->proto = proto;
	ret = __parse_l4(p, l4, end, proto, 0);
	__builtin_memcpy(p->tsrc, p->src, 16);
	__builtin_memcpy(p->tdst, p->dst, 16);
	if (ret == FP_PARSE_LOCAL) {
		/* bounds: __parse_l4 checked l4 + 8, the verifier wants to see it here too */
		if (p->family != 6)
			return FP_PARSE_UNTRACKED;	/* ICMPv6 inside IPv4: not ND */
		if (l4 + 8 > end || l3 + sizeof(struct ipv6hdr) > end)
			return FP_PARSE_MALFORMED;
		return __on_link6(l3, p, *(__u8 *)l4) ? FP_PARSE_LOCAL : FP_PARSE_UNTRACKED;
	}
	if (ret != FP_PARSE_RELATED)
		return ret;

	/* ICMP error: the quoted packet starts 8 bytes in; its tuple is the flow's */
	if (p->family == 4)
		ret = __parse_ip4(l4 + 8, end, p->tsrc, p->tdst, &inner_l4, &inner_proto);
	else
		ret = __parse_ip6(l4 + 8, end, p->tsrc, p->tdst, &inner_l4, &inner_proto);
	if (ret != FP_PARSE_OK)
		return ret == FP_PARSE_UNTRACKED ? FP_PARSE_UNTRACKED : FP_PARSE_MALFORMED;
	p->proto = inner_proto;
	ret = __parse_l4(p, inner_l4, end, inner_proto, 1);
	if (ret != FP_PARSE_OK)
		return ret == FP_PARSE_MALFORMED ? FP_PARSE_MALFORMED : FP_PARSE_UNTRACKED;
	return FP_PARSE_RELATED;
}

#endif
