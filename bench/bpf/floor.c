/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * floor.c - benchmark only: the least any TC flow table has to do per packet, to price
 * flowpin's data path against the floor of its own design on this machine. Parse
 * Ethernet/IPv4/ports, look the 5-tuple up in a preallocated hash with flowpin's key and
 * value types (create it on a miss), count the packet with one atomic add. No canonical
 * key, no tunnel, no TCP state, no verdict counters, no IPv6: it passes everything.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

#include "lib/flow_types.h"

BPF_F_TABLE("hash", struct fp_flow_key4, struct fp_flow_value, floor_flows, 1048576, 0);

int fp_floor(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct fp_flow_key4 k = {};
	struct fp_flow_value *v;
	struct udphdr *l4;	/* TCP and UDP ports sit at the same offsets */
	struct iphdr *ip;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return TC_ACT_OK;
	l4 = (void *)ip + ip->ihl * 4;
	if ((void *)(l4 + 1) > end)
		return TC_ACT_OK;
	k.addr[0] = ip->saddr;
	k.addr[1] = ip->daddr;
	k.port[0] = l4->source;
	k.port[1] = l4->dest;
	k.proto = ip->protocol;
	v = floor_flows.lookup(&k);
	if (!v) {
		struct fp_flow_value n = {};

		floor_flows.update(&k, &n);
		return TC_ACT_OK;
	}
	__sync_fetch_and_add(&v->acct[0], (1ULL << FP_ACCT_BYTES_BITS) | skb->len);
	return TC_ACT_OK;
}
