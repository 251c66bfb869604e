/* SPDX-License-Identifier: GPL-2.0 */
/* nat.bpf.h: destination rewrite on ingress (XDP) and source rewrite of replies (TC). */
#ifndef BGS_NAT_BPF_H
#define BGS_NAT_BPF_H

#include "common.bpf.h"
#include "csum.bpf.h"
#include "flow.bpf.h"
#include "maps.bpf.h"
#include "parse.bpf.h"

/* Headers the egress program must see in the linear area: Ethernet, two tags, an IP header
 * with options, and for an ICMP error the ICMP header, the quoted IP header and 8 bytes more.
 */
#define NAT_PULL_LEN (14 + 8 + 60 + 8 + 60 + 20)

/* Rewrite a client packet's destination (and, unless it is a later fragment, its destination
 * port) to its backend, checksums by difference.
 */
static __always_inline void nat_dnat_xdp(struct bgs_pkt *pkt, const __u32 *to, __u16 dport,
					 void *data_end)
{
	__u32 diff = csum_diff_addr(0, pkt->key.daddr, to, pkt->key.family);

	if (pkt->key.proto == IPPROTO_TCP && pkt->l4) {
		struct tcphdr *th = pkt->l4;

		if ((void *)(th + 1) > data_end)
			return;
		csum_apply(&th->check, csum_diff2(diff, th->dest, dport));
		th->dest = dport;
	} else if (pkt->key.proto == IPPROTO_UDP && pkt->l4) {
		struct udphdr *uh = pkt->l4;

		if ((void *)(uh + 1) > data_end)
			return;
		csum_apply_udp(&uh->check, csum_diff2(diff, uh->dest, dport));
		uh->dest = dport;
	}
	if (pkt->key.family == BGS_AF_INET) {
		struct iphdr *iph = pkt->l3;

		if ((void *)(iph + 1) > data_end)
			return;
		csum_apply(&iph->check, diff);
		iph->daddr = to[0];
	} else {
		struct ipv6hdr *ip6 = pkt->l3;

		if ((void *)(ip6 + 1) > data_end)
			return;
		__builtin_memcpy(&ip6->daddr, to, 16);
	}
}

/* Make sure the headers of an egress skb are in its linear area. A subprogram of its own, so
 * that the compiler cannot carry its context offsets over into the caller's packet access.
 */
static __noinline int nat_pull(struct __sk_buff *skb)
{
	__u32 linear = (long)skb->data_end - (long)skb->data;

	if (linear < NAT_PULL_LEN && skb->len > linear)
		return bpf_skb_pull_data(skb, skb->len < NAT_PULL_LEN ? skb->len : NAT_PULL_LEN);
	return 0;
}

/* Is (address, port, protocol) a backend the egress program must look at? */
static __always_inline struct bgs_backend_ref *nat_backend_ref(const __u32 *addr, __u16 port,
							       __u8 proto, __u8 family)
{
	struct bgs_backend_addr ba = {
		.addr = { addr[0], addr[1], addr[2], addr[3] },
		.port = port,
		.proto = proto,
		.family = family,
	};

	return bpf_map_lookup_elem(&bgs_backend_addrs, &ba);
}

/* The flow a packet leaving the node belongs to as a reply, with its key: from a backend's
 * address and port, to a client with a live flow on that very backend, and in by the interface
 * that backend is reached by. NULL otherwise (counted): the packet leaves untouched. A SYN from
 * the backend (in by its interface: no one else can end the flow) on a closed flow is a new
 * connection on the same addresses and ports (the client reused its port to reach the backend
 * directly): that flow is over, and its entry is deleted.
 */
static __always_inline struct bgs_flow *
nat_reply_flow(const struct __sk_buff *skb, const struct bgs_pkt *pkt, struct bgs_conn_key *key)
{
	struct bgs_backend_ref *ref;
	struct bgs_config *cfg;
	struct bgs_flow *f;
	__u32 zero = 0;

	ref = nat_backend_ref(pkt->key.saddr, pkt->key.sport, pkt->key.proto, pkt->key.family);
	if (!ref)
		return NULL;
	f = flow_of_reply(&pkt->key, ref, key);
	cfg = bpf_map_lookup_elem(&bgs_config, &zero);
	if (!f || !cfg ||
	    flow_is_expired(f, pkt->key.proto, flow_units(bpf_ktime_get_coarse_ns()), cfg)) {
		stat_inc(BGS_STAT_REPLY_NO_FLOW);
		return NULL;
	}
	if (skb->ingress_ifindex != f->ifindex) {
		stat_inc(BGS_STAT_REPLY_WRONG_DEV);
		return NULL;
	}
	if ((pkt->tcp_flags & TCP_FLAG_SYN) && flow_is_closed(f, pkt->key.proto)) {
		bpf_map_delete_elem(&bgs_flows, key);
		stat_inc(BGS_STAT_REPLY_SUPERSEDED);
		return NULL;
	}
	return f;
}

/* Rewrite a reply's source (and, unless it is a later fragment, its source port) to the VIP
 * with the skb checksum helpers, which also keep CHECKSUM_PARTIAL and GSO packets right.
 * Packet pointers are invalid afterwards.
 */
static __always_inline int nat_snat_tc(struct __sk_buff *skb, const struct bgs_pkt *pkt,
				       const __u32 *to, __u16 sport)
{
	bool v6 = pkt->key.family == BGS_AF_INET6;
	__u32 saddr_off = pkt->l3_off +
			  (v6 ? offsetof(struct ipv6hdr, saddr) : offsetof(struct iphdr, saddr));
	__u16 pfrom = pkt->key.sport;
	__u32 l4_csum = 0;
	__u64 flags = 0;
	__s64 diff;

	if (pkt->frag != BGS_FRAG_LATER) {
		if (pkt->key.proto == IPPROTO_TCP) {
			l4_csum = pkt->l4_off + offsetof(struct tcphdr, check);
		} else {
			l4_csum = pkt->l4_off + offsetof(struct udphdr, check);
			flags = BPF_F_MARK_MANGLED_0;
		}
	}
	if (v6) {
		diff = bpf_csum_diff((__be32 *)pkt->key.saddr, 16, (__be32 *)to, 16, 0);
		if (l4_csum && bpf_l4_csum_replace(skb, l4_csum, 0, diff, BPF_F_PSEUDO_HDR | flags))
			return -1;
	} else {
		if (l4_csum && bpf_l4_csum_replace(skb, l4_csum, pkt->key.saddr[0], to[0],
						   BPF_F_PSEUDO_HDR | flags | 4))
			return -1;
		if (bpf_l3_csum_replace(skb, pkt->l3_off + offsetof(struct iphdr, check),
					pkt->key.saddr[0], to[0], 4))
			return -1;
	}
	if (l4_csum && (bpf_l4_csum_replace(skb, l4_csum, pfrom, sport, flags | 2) ||
			bpf_skb_store_bytes(skb, pkt->l4_off, &sport, 2, 0)))
		return -1;
	return bpf_skb_store_bytes(skb, saddr_off, to, v6 ? 16 : 4, 0);
}

#endif /* BGS_NAT_BPF_H */
