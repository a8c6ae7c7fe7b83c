/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * tunnel.h - which tunnel a packet belongs to (traffic selectors) and its state.
 *
 * A selector pair is (local prefix, remote prefix) -> tunnel id. The LPM trie is keyed
 * by the remote prefix; its value lists up to FP_SEL_SLOTS local prefixes, already
 * merged by user space with those of every covering remote prefix and ordered most
 * specific first, so one trie lookup and a short scan decide. Local is the LAN side:
 * the source of an outbound packet, the destination of an inbound one.
 */
#ifndef FLOWPIN_TUNNEL_H
#define FLOWPIN_TUNNEL_H

#include "flow_types.h"
#include "maps.h"
#include "parse.h"
#include "flow.h"

/* __prefix_match - @addr (network order words) lies in @pfx/@plen, over @words words. */
static __always_inline int __prefix_match(const __u32 *addr, const __u32 *pfx, __u8 plen,
					  int words)
{
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		__u32 mask;
		int bits = (int)plen - i * 32;

		if (i >= words || bits <= 0)
			break;
		mask = bits >= 32 ? 0xffffffff : bpf_htonl(~((1U << (32 - bits)) - 1));
		if ((addr[i] ^ pfx[i]) & mask)
			return 0;
	}
	return 1;
}

/**
 * fp_tunnel_classify - tunnel id of traffic between @local and @remote; 0 = no tunnel.
 */
static __always_inline __u16 fp_tunnel_classify(__u8 family, const __u32 *local,
						const __u32 *remote)
{
	int i;

	if (family == 4) {
		struct fp_sel_key4 k = { .prefixlen = 32, .remote = remote[0] };
		struct fp_sel_value4 *v = fp_selectors4.lookup(&k);

		FP_NO_MERGE();	/* see flow.h */
		if (!v)
			return 0;
#pragma unroll
		for (i = 0; i < FP_SEL_SLOTS; i++) {
			if (!v->slot[i].tunnel_id)
				break;
			if (__prefix_match(local, &v->slot[i].local, v->slot[i].local_plen, 1))
				return v->slot[i].tunnel_id;
		}
		return 0;
	} else {
		struct fp_sel_key6 k = { .prefixlen = 128 };
		struct fp_sel_value6 *v;

		__builtin_memcpy(k.remote, remote, 16);
		v = fp_selectors6.lookup(&k);
		if (!v)
			return 0;
#pragma unroll
		for (i = 0; i < FP_SEL_SLOTS; i++) {
			if (!v->slot[i].tunnel_id)
				break;
			if (__prefix_match(local, v->slot[i].local, v->slot[i].local_plen, 4))
				return v->slot[i].tunnel_id;
		}
		return 0;
	}
}

/*
 * fp_tunnel_get - control word of @id, or NULL for an id beyond the array. Tunnel 0 is
 * the non-VPN pseudo-tunnel; only its generation is used.
 */
static __always_inline struct fp_tunnel *fp_tunnel_get(__u16 id)
{
	__u32 k = id;

	return fp_tunnels.lookup(&k);
}

static __always_inline struct fp_tunnel_stats *fp_tunnel_stats_get(__u16 id)
{
	__u32 k = id;

	return fp_tunnel_stats.lookup(&k);
}

/* fp_tunnel_up - traffic of tunnel @id may pass; an unknown id counts as down. */
static __always_inline int fp_tunnel_up(__u16 id, const struct fp_tunnel *t)
{
	return id == 0 || (t && t->state == FP_TUNNEL_UP);
}

#endif
