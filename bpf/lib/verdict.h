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

static __always_inline void count_stat(__u32 idx)
{
	__u64 *c = counters.lookup(&idx);

	if (c)
		*c += 1;
}

/* verdict - count @reason and return TC_ACT_OK for PASS_* or TC_ACT_SHOT for DROP_*. */
static __always_inline int verdict(__u32 reason)
{
	count_stat(reason);
	return reason < FP_R_DROP_NO_CONN ? TC_ACT_OK : TC_ACT_SHOT;
}

#endif
