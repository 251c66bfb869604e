// SPDX-License-Identifier: GPL-2.0
/* floor.bpf.c: the cheapest programs that still look at a packet, for `make bench`.
 *
 * The benchmark runs them with BPF_PROG_TEST_RUN exactly as it runs bgs_ingress and bgs_egress,
 * so that what BPF_PROG_TEST_RUN itself costs (timer, context setup) is measured once and each
 * bgswitch figure can be given as a cost over this floor. Not part of the data plane.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* Bounds-check the Ethernet header and send the frame back out. */
SEC("xdp")
int floor_xdp(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	return XDP_TX;
}

/* The same for the egress hook: bounds-check the Ethernet header, let the packet go. */
SEC("tc")
int floor_tc(struct __sk_buff *skb)
{
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = (void *)(long)skb->data;

	if ((void *)(eth + 1) > data_end)
		return 2; /* TC_ACT_SHOT */
	return 0; /* TC_ACT_OK */
}
