/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * events.h - records for user space on the ring buffer.
 *
 * Demand and map-full events are rate-limited per tunnel through fp_tunnel_stats. The
 * check-then-store of the timestamp is not atomic: two CPUs may both emit within one
 * interval. That is accepted (at most one extra event per CPU per interval) to avoid a
 * cmpxchg that bcc's default target does not emit. Removed-flow records are never
 * rate-limited: each is one flow for the logs. A full ring buffer is counted (removed-flow
 * records apart as well: the daemon logs their loss once per interval).
 */
#ifndef FLOWPIN_EVENTS_H
#define FLOWPIN_EVENTS_H

#include "flow_types.h"
#include "maps.h"
#include "flow.h"
#include "verdict.h"

static __always_inline void __event_fill(struct fp_event *e, __u32 type, __u16 tunnel_id,
					 const struct fp_pkt *p, const struct fp_keys *k,
					 __u64 now_ns)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->type = type;
	e->tunnel_id = tunnel_id;
	e->family = p->family;
	e->proto = p->proto;
	e->ts_ns = now_ns;
	if (p->family == 4) {
		e->addr[0].w[0] = k->k4.addr[0];
		e->addr[1].w[0] = k->k4.addr[1];
		e->port[0] = k->k4.port[0];
		e->port[1] = k->k4.port[1];
	} else {
		__builtin_memcpy(e->addr, k->k6.addr, 32);
		e->port[0] = k->k6.port[0];
		e->port[1] = k->k6.port[1];
	}
}

/**
 * fp_event_emit - send one event; @flow (may be NULL) is copied for FP_EV_FLOW_REMOVED.
 * @last_ns: the per-tunnel rate-limit stamp for this event type, NULL = not limited.
 */
static __always_inline void fp_event_emit(__u32 type, __u16 tunnel_id, const struct fp_pkt *p,
					  const struct fp_keys *k, const struct fp_flow_value *flow,
					  __u64 *last_ns, __u64 now_ns, __u32 interval_ms)
{
	struct fp_event *e;

	if (last_ns) {
		__u64 last = *last_ns;

		if (last && now_ns - last < (__u64)interval_ms * 1000000ULL)
			return;
		*last_ns = now_ns;
	}
	e = fp_events.ringbuf_reserve(sizeof(struct fp_event));
	if (!e) {
		fp_count_stat(FP_S_EVENT_LOST);
		/* the one loss an admin misses line by line: a teardown never logged */
		if (type == FP_EV_FLOW_REMOVED)
			fp_count_stat(FP_S_REMOVED_LOST);
		return;
	}
	__event_fill(e, type, tunnel_id, p, k, now_ns);
	if (flow)
		__builtin_memcpy(&e->flow, flow, sizeof(*flow));
	/*
	 * A removed-flow record wakes nobody: the daemon reads the ring on its loop's tick
	 * (every 50 ms) and never sleeps on it. A wakeup is an irq_work, a self-IPI, every
	 * time the reader has caught up, that is per record at a steady rate: on a VM an
	 * exit each. Measured (bench forward's sliced connections/s, flowpin against plain):
	 * 0.85-0.88x with the wakeups, 0.92-0.95x without. The rare, rate-limited events
	 * keep theirs.
	 */
	fp_events.ringbuf_submit(e, type == FP_EV_FLOW_REMOVED ? BPF_RB_NO_WAKEUP : 0);
}

#endif
