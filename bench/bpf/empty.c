/* SPDX-License-Identifier: GPL-2.0-only */
/* empty.c - a SCHED_CLS program that does nothing: the benchmark's baseline. */
#include <uapi/linux/pkt_cls.h>

int fp_empty(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
