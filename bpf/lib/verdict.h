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

/* fp_verdict - count @reason and return TC_ACT_OK for PASS_* or TC_ACT_SHOT for DROP_*. */
static __always_inline int fp_verdict(__u32 reason)
{
	fp_count_stat(reason);
	return reason < FP_R_DROP_NO_CONN ? TC_ACT_OK : TC_ACT_SHOT;
}

#endif
