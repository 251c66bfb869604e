/* SPDX-License-Identifier: GPL-2.0 */
/* fwd.bpf.h: the XDP fast path: a next hop cached per backend, then XDP_TX or XDP_REDIRECT. */
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

/* The route to a backend as the kernel would take it from this packet: interface, MAC addresses
 * and path MTU. Two lookups: one that must fail the MTU check (it returns the path MTU), then
 * one without it (tot_len 0) that resolves the neighbour.
 */
static __always_inline void fwd_fib(struct xdp_md *ctx, const struct bgs_pkt *pkt, const __u32 *to,
				    __u16 dport, struct bgs_nexthop *nh)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.l4_protocol = pkt->key.proto;
	fib.sport = pkt->key.sport;
	fib.dport = dport;
	fib.ifindex = ctx->ingress_ifindex;
	if (pkt->key.family == BGS_AF_INET) {
		fib.family = AF_INET;
		fib.ipv4_src = pkt->key.saddr[0];
		fib.ipv4_dst = to[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, pkt->key.saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, to, 16);
	}
	fib.tot_len = 0xffff;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	nh->mtu = rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? fib.mtu_result : 0xffff;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		fib.tot_len = 0;
		fib.ifindex = ctx->ingress_ifindex;
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	}
	nh->rc = rc;
	nh->ifindex =
		rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH ? fib.ifindex : 0;
	__builtin_memcpy(nh->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fib.smac, ETH_ALEN);
}

/* The next hop toward backend slot (address to, port dport), from this CPU's cache, looked up
 * again when it is older than BGS_NEXTHOP_NS or its neighbour was not resolved yet. NULL only if
 * the slot is out of range.
 */
static __always_inline struct bgs_nexthop *fwd_nexthop(struct xdp_md *ctx,
						       const struct bgs_pkt *pkt, __u32 slot,
						       const __u32 *to, __u16 dport, __u64 now)
{
	struct bgs_nexthop *nh = bpf_map_lookup_elem(&bgs_nexthops, &slot);

	if (!nh)
		return NULL;
	if (now < nh->expires)
		return nh;
	fwd_fib(ctx, pkt, to, dport, nh);
	nh->expires = nh->rc == BPF_FIB_LKUP_RET_NO_NEIGH ? 0 : now + BGS_NEXTHOP_NS;
	return nh;
}

/* Forward a rewritten client packet the way the kernel would, without the kernel: by the cached
 * next hop, with the TTL decremented and the MAC addresses set. Falls back to XDP_PASS (counted)
 * whenever the stack is needed: no route or neighbour yet, a packet over the path MTU, a VLAN
 * tag, an expiring TTL, or an egress interface not registered for redirects.
 */
static __always_inline int fwd_xdp(struct xdp_md *ctx, const struct bgs_pkt *pkt, void *data,
				   void *data_end, const struct bgs_nexthop *nh)
{
	struct ethhdr *eth = data;
	__u32 ifindex;

	if (!nh || nh->rc != BPF_FIB_LKUP_RET_SUCCESS) {
		if (nh && nh->rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
			stat_inc(BGS_STAT_FWD_NO_NEIGH);
			return XDP_PASS;
		}
		goto stack;
	}
	ifindex = nh->ifindex;
	if (pkt->l3_off != sizeof(*eth) || (void *)(eth + 1) > data_end || pkt->len > nh->mtu ||
	    (ifindex != ctx->ingress_ifindex && !bpf_map_lookup_elem(&bgs_tx_ports, &ifindex)))
		goto stack;
	if (pkt->key.family == BGS_AF_INET) {
		struct iphdr *iph = pkt->l3;

		if ((void *)(iph + 1) > data_end || iph->ttl <= 1)
			goto stack;
		csum_apply(&iph->check,
			   csum_diff2(0, bpf_htons(iph->ttl << 8), bpf_htons((iph->ttl - 1) << 8)));
		iph->ttl--;
	} else {
		struct ipv6hdr *ip6 = pkt->l3;

		if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
			goto stack;
		ip6->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
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
