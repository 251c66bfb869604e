/* SPDX-License-Identifier: GPL-2.0 */
/* fwd.bpf.h: the XDP fast path: a FIB lookup after the rewrite, then XDP_TX or XDP_REDIRECT. */
#ifndef BGS_FWD_BPF_H
#define BGS_FWD_BPF_H

#include "common.bpf.h"
#include "csum.bpf.h"
#include "maps.bpf.h"
#include "parse.bpf.h"

/* Egress interfaces the fast path may redirect to (`attach --xdp-egress`). A route through any
 * other interface goes through the kernel's forwarding, which every device accepts.
 */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, BGS_MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_tx_ports SEC(".maps");

/* Forward a rewritten client packet the way the kernel would, without the kernel: route it,
 * decrement its TTL, set the MAC addresses, and send it out. Falls back to XDP_PASS (counted)
 * whenever the stack is needed: no route or neighbour yet, a VLAN tag, an expiring TTL, or an
 * egress interface not registered for redirects.
 */
static __always_inline int fwd_xdp(struct xdp_md *ctx, const struct bgs_pkt *pkt, void *data,
				   void *data_end)
{
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth = data;
	__u32 ifindex;
	int rc;

	if (pkt->l3_off != sizeof(*eth) || (void *)(eth + 1) > data_end)
		goto stack;
	fib.l4_protocol = pkt->key.proto;
	fib.sport = pkt->key.sport;
	fib.dport = pkt->key.dport;
	fib.tot_len = pkt->len;
	fib.ifindex = ctx->ingress_ifindex;
	if (pkt->key.family == BGS_AF_INET) {
		struct iphdr *iph = pkt->l3;

		if ((void *)(iph + 1) > data_end || iph->ttl <= 1)
			goto stack;
		fib.family = AF_INET;
		fib.tos = iph->tos;
		fib.ipv4_src = iph->saddr;
		fib.ipv4_dst = iph->daddr;
	} else {
		struct ipv6hdr *ip6 = pkt->l3;

		if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
			goto stack;
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	}

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		stat_inc(BGS_STAT_FWD_NO_NEIGH);
		return XDP_PASS;
	}
	ifindex = fib.ifindex;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS ||
	    (ifindex != ctx->ingress_ifindex && !bpf_map_lookup_elem(&bgs_tx_ports, &ifindex)))
		goto stack;

	/* Past this point the packet leaves here: do what a router does to it. */
	if (pkt->key.family == BGS_AF_INET) {
		struct iphdr *iph = pkt->l3;

		if ((void *)(iph + 1) > data_end)
			goto stack;
		csum_apply(&iph->check,
			   csum_diff2(0, bpf_htons(iph->ttl << 8), bpf_htons((iph->ttl - 1) << 8)));
		iph->ttl--;
	} else {
		struct ipv6hdr *ip6 = pkt->l3;

		if ((void *)(ip6 + 1) > data_end)
			goto stack;
		ip6->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (ifindex == ctx->ingress_ifindex) {
		stat_inc(BGS_STAT_FWD_TX);
		return XDP_TX;
	}
	stat_inc(BGS_STAT_FWD_REDIRECT);
	return bpf_redirect_map(&bgs_tx_ports, ifindex, XDP_PASS);
stack:
	stat_inc(BGS_STAT_FWD_STACK);
	return XDP_PASS;
}

#endif /* BGS_FWD_BPF_H */
