/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * flow.h - canonical flow key, lookup, create and delete.
 *
 * Both directions of a flow map to one key (endpoint 0 = the lower (address, port)),
 * so every packet costs one hash lookup (a SYN: one insert instead, see __open_first in
 * policy.h). The key is zero-filled first because its padding is hashed.
 */
#ifndef FLOWPIN_FLOW_H
#define FLOWPIN_FLOW_H

#include "flow_types.h"
#include "maps.h"
#include "parse.h"

/* struct fp_keys - the key of the packet's family, and which endpoint sent it. */
struct fp_keys {
	union {
		struct fp_flow_key4 k4;
		struct fp_flow_key6 k6;
	};
	__u8 side;		/* index in the key of the packet's sender */
};

/* __addr6_cmp - lexicographic order of two IPv6 addresses, word by word. */
static __always_inline int __addr6_cmp(const __u32 *a, const __u32 *b)
{
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		if (a[i] != b[i])
			return a[i] < b[i] ? -1 : 1;
	}
	return 0;
}

/**
 * fp_flow_key_build - fill @k with the canonical key of the tuple in @p.
 * The order only has to be consistent, not numeric, so raw words are compared.
 */
static __always_inline void fp_flow_key_build(const struct fp_pkt *p, struct fp_keys *k)
{
	int c;

	if (p->family == 4) {
		c = p->tsrc[0] == p->tdst[0] ? 0 : (p->tsrc[0] < p->tdst[0] ? -1 : 1);
	} else {
		c = __addr6_cmp(p->tsrc, p->tdst);
	}
	if (c == 0)
		c = p->sport <= p->dport ? -1 : 1;
	k->side = c < 0 ? 0 : 1;

	if (p->family == 4) {
		/* explicit branches: a variable stack index is rejected by the verifier */
		__builtin_memset(&k->k4, 0, sizeof(k->k4));
		if (k->side == 0) {
			k->k4.addr[0] = p->tsrc[0];
			k->k4.addr[1] = p->tdst[0];
			k->k4.port[0] = p->sport;
			k->k4.port[1] = p->dport;
		} else {
			k->k4.addr[0] = p->tdst[0];
			k->k4.addr[1] = p->tsrc[0];
			k->k4.port[0] = p->dport;
			k->k4.port[1] = p->sport;
		}
		k->k4.proto = p->proto;
	} else {
		__builtin_memset(&k->k6, 0, sizeof(k->k6));
		if (k->side == 0) {
			__builtin_memcpy(k->k6.addr[0].w, p->tsrc, 16);
			__builtin_memcpy(k->k6.addr[1].w, p->tdst, 16);
			k->k6.port[0] = p->sport;
			k->k6.port[1] = p->dport;
		} else {
			__builtin_memcpy(k->k6.addr[0].w, p->tdst, 16);
			__builtin_memcpy(k->k6.addr[1].w, p->tsrc, 16);
			k->k6.port[0] = p->dport;
			k->k6.port[1] = p->sport;
		}
		k->k6.proto = p->proto;
	}
}

/*
 * Every map call below is fenced with an empty asm: without it clang merges the IPv4
 * and IPv6 calls into one call whose map is a register, the verifier then sees two maps
 * at one call site and cannot inline the lookup (~20 ns more per packet).
 */
#define FP_NO_MERGE() asm volatile("" ::: "memory")

static __always_inline struct fp_flow_value *fp_flow_lookup(const struct fp_pkt *p,
							    struct fp_keys *k)
{
	struct fp_flow_value *v;

	if (p->family == 4) {
		v = fp_flows4.lookup(&k->k4);
		FP_NO_MERGE();
	} else {
		v = fp_flows6.lookup(&k->k6);
	}
	return v;
}

/**
 * fp_flow_store - insert @v under @k.
 * @replace: a stale entry is known to exist and is overwritten (BPF_ANY) instead of a
 *           delete + insert; otherwise BPF_NOEXIST.
 * Returns 0, -EEXIST (another CPU created it first) or an error when the table is full
 * (-E2BIG for a preallocated hash).
 */
static __always_inline int fp_flow_store(const struct fp_pkt *p, struct fp_keys *k,
					 struct fp_flow_value *v, int replace)
{
	int err;

	if (p->family == 4) {
		err = replace ? fp_flows4.update(&k->k4, v) : fp_flows4.insert(&k->k4, v);
		FP_NO_MERGE();
	} else {
		err = replace ? fp_flows6.update(&k->k6, v) : fp_flows6.insert(&k->k6, v);
	}
	return err;
}

static __always_inline void fp_flow_delete(const struct fp_pkt *p, struct fp_keys *k)
{
	if (p->family == 4) {
		fp_flows4.delete(&k->k4);
		FP_NO_MERGE();
	} else {
		fp_flows6.delete(&k->k6);
	}
}

#endif
