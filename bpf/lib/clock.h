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

static __always_inline __u64 fp_now_ns(const struct fp_config *cfg)
{
	return cfg->now_ns ? cfg->now_ns : bpf_ktime_get_ns();
}

#endif
