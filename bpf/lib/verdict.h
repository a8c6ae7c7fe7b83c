/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * verdict.h - turn a reason into a TC verdict and count it.
 *
 * Counters are per-CPU: no atomics and no shared cache line on the fast path; user
 * space sums the CPUs.
 */
#ifndef FLOWPIN_VERDICT_H
#define FLOWPIN_VERDICT_H

#include "flow_types.h"
#include "maps.h"

/* fp_count_stat - add one to per-CPU counter @idx (enum fp_reason or enum fp_stat). */
static __always_inline void fp_count_stat(__u32 idx)
{
	__u64 *c = fp_counters.lookup(&idx);

	if (c)
		*c += 1;
}

/**
 * fp_verdict - count @reason and return its TC verdict: TC_ACT_SHOT for DROP_*;
 * TC_ACT_OK for the tunnel traffic flowpin passes (PASS_FLOW, PASS_NEW, PASS_PICKUP,
 * PASS_RELATED: its own, decided); TC_ACT_UNSPEC for traffic that is not flowpin's
 * business (non-VPN flows, untracked, not IP, table full for non-VPN), so the programs
 * after it still decide: on a tcx hook -1 is TCX_NEXT (the next link's program runs), on
 * clsact the next filter runs, and with none after, both pass the packet as TC_ACT_OK
 * would. The values are uapi (pkt_cls.h: TC_ACT_UNSPEC; bpf.h: TCX_NEXT = -1).
 */
static __always_inline int fp_verdict(__u32 reason)
{
	fp_count_stat(reason);
	if (reason >= FP_R_DROP_NO_CONN)
		return TC_ACT_SHOT;
	if (reason == FP_R_PASS_NONVPN || reason == FP_R_PASS_UNTRACKED ||
	    reason == FP_R_PASS_NOT_IP || reason == FP_R_PASS_NOTRACK_FULL)
		return TC_ACT_UNSPEC;
	return TC_ACT_OK;
}

#endif
