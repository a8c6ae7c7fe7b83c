/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * flowpin.c - TC programs of the flowpin data path, attached to the gateway's
 * LAN-facing interface: clsact ingress sees LAN -> tunnel (outbound) traffic, clsact
 * egress sees tunnel -> LAN (inbound) traffic; and the WAN guard, attached to the
 * WAN-facing interface(s). The logic lives in lib/, by concern.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

#include "lib/flow_types.h"
#include "lib/maps.h"
#include "lib/policy.h"
#include "lib/guard.h"

int fp_outbound(struct __sk_buff *skb)
{
	return fp_handle(skb, FP_DIR_OUT);
}

int fp_inbound(struct __sk_buff *skb)
{
	return fp_handle(skb, FP_DIR_IN);
}

/* WAN clsact egress: what the gateway sends; tunnel traffic must be ESP by now. */
int fp_wan_out(struct __sk_buff *skb)
{
	return fp_guard(skb, FP_DIR_OUT);
}

/* WAN clsact ingress: what the gateway receives; cleartext of a tunnel is refused. */
int fp_wan_in(struct __sk_buff *skb)
{
	return fp_guard(skb, FP_DIR_IN);
}

/* Run by the loader through BPF_PROG_TEST_RUN to map jiffies to CLOCK_MONOTONIC. */
int fp_clock_probe(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct fp_clock_sample *s = fp_clock_sample.lookup(&zero);

	if (s) {
		s->jiffies = bpf_jiffies64();
		s->mono_ns = bpf_ktime_get_ns();
	}
	return TC_ACT_OK;
}
