/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * clock.h - the data path's notion of "now".
 *
 * Production reads CLOCK_MONOTONIC (bpf_ktime_get_ns). Tests set fp_config.now_ns and
 * then own the clock, like Cilium's faked ktime_get_ns: timeouts are tested without
 * sleeping. The override costs one predictable branch on a value already in cache.
 */
#ifndef FLOWPIN_CLOCK_H
#define FLOWPIN_CLOCK_H

#include "flow_types.h"

/* bcc 0.26 declares no wrapper for this helper (kernel 5.11+) */
static __u64 (*fp_ktime_get_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;

/*
 * fp_now_ns - CLOCK_MONOTONIC in ns (to a jiffy), or the test clock.
 *
 * Why jiffies: the verifier inlines bpf_jiffies64() into one load on 64-bit JITs, while
 * every real helper call costs a call and a return, ~18 ns each on CPUs with the SRSO
 * "Safe RET" mitigation, which is a third of an established flow's budget. Flow times
 * are whole seconds, so a jiffy (1-10 ms) of resolution is plenty. The loader maps
 * jiffies to CLOCK_MONOTONIC (fp_config.base_*); uncalibrated, the coarse clock is read.
 */
static __always_inline __u64 fp_now_ns(const struct fp_config *cfg)
{
	if (cfg->now_ns)
		return cfg->now_ns;
	if (cfg->ns_per_jiffy)
		return cfg->base_ns +
		       (__s64)(bpf_jiffies64() - cfg->base_jiffies) * cfg->ns_per_jiffy;
	return fp_ktime_get_coarse_ns();
}

#endif
