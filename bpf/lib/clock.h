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

#ifndef FP_PRECISE_CLOCK
/* bcc 0.26 declares no wrapper for this helper (kernel 5.11+) */
static __u64 (*fp_ktime_get_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;
#endif

/*
 * fp_now_ns - CLOCK_MONOTONIC in ns, or the test clock.
 * The coarse clock (updated every tick, a few ms) is enough for second-resolution flow
 * times and costs a memory read, where bpf_ktime_get_ns reads the clocksource: ~30 ns
 * per packet on a VM whose clocksource is not the TSC.
 */
static __always_inline __u64 fp_now_ns(const struct fp_config *cfg)
{
	if (cfg->now_ns)
		return cfg->now_ns;
#ifdef FP_PRECISE_CLOCK
	return bpf_ktime_get_ns();
#else
	return fp_ktime_get_coarse_ns();
#endif
}

#endif
