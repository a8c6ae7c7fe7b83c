/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * calibrate.c - benchmark-only programs that price what the data path is built from on
 * this machine: one helper call (CPU mitigations such as AMD SRSO "Safe RET" make every
 * kernel call/return expensive) and one lookup in a preallocated hash with a 16-byte key.
 */
#include <uapi/linux/pkt_cls.h>

struct cal_key {
	__u32 w[4];
};

BPF_HASH(cal_hash, struct cal_key, __u64, 1024);

static __u64 (*cal_ktime_get_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;

/* ten helper calls: (cost - empty) / 10 is the price of one call */
int cal_calls(struct __sk_buff *skb)
{
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += cal_ktime_get_coarse_ns();
	return sum == 1 ? TC_ACT_SHOT : TC_ACT_OK;
}

/* one hash lookup that hits */
int cal_lookup(struct __sk_buff *skb)
{
	struct cal_key k = { .w = { 1, 2, 3, 4 } };
	__u64 *v = cal_hash.lookup(&k);

	return v ? TC_ACT_OK : TC_ACT_SHOT;
}
