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

struct cal_value {
	__u64 w[6];		/* 48 bytes, like struct fp_flow_value */
};

BPF_HASH(cal_hash, struct cal_key, __u64, 1024);
BPF_HASH(cal_insert_hash, struct cal_key, struct cal_value, 1048576);
BPF_PERCPU_ARRAY(cal_seq, __u32, 1);
struct cal_lpm_key {
	__u32 prefixlen;
	__u32 addr;
};
BPF_F_TABLE("lpm_trie", struct cal_lpm_key, __u64, cal_lpm, 64, BPF_F_NO_PREALLOC);

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

/* one insert of a new key (per-CPU counter in the key) into a preallocated 1M hash */
int cal_insert(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u32 *seq = cal_seq.lookup(&zero);
	struct cal_key k = {};
	struct cal_value v = {};

	if (!seq)
		return TC_ACT_SHOT;
	k.w[0] = *seq;
	*seq += 1;
	return cal_insert_hash.insert(&k, &v) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* one LPM trie lookup that hits a /16 */
int cal_lpm_lookup(struct __sk_buff *skb)
{
	struct cal_lpm_key k = { .prefixlen = 32, .addr = 0x0500010a };

	return cal_lpm.lookup(&k) ? TC_ACT_OK : TC_ACT_SHOT;
}
