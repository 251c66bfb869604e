/* SPDX-License-Identifier: GPL-2.0 */
/* nat.bpf.h: destination rewrite on ingress (XDP) and source rewrite of replies (TC). */
#ifndef BGS_NAT_BPF_H
#define BGS_NAT_BPF_H

#include "common.bpf.h"
#include "csum.bpf.h"
#include "maps.bpf.h"
#include "parse.bpf.h"

/* Headers the egress program must see in the linear area: Ethernet, a tag, IPv4, TCP. */
#define NAT_PULL_LEN (14 + 4 + 60 + 20)

/* Rewrite a client packet's destination to the flow's backend, checksums by difference. */
static __always_inline void nat_dnat_xdp(struct bgs_pkt *pkt, const struct bgs_flow *f,
					 void *data_end)
{
	struct iphdr *iph = pkt->iph;
	__u32 from = pkt->key.daddr[0], to = f->daddr[0];

	/* The parser checked these bounds; the checks here keep the verifier's proof local. */
	if ((void *)(iph + 1) > data_end)
		return;
	if (pkt->key.proto == IPPROTO_TCP) {
		struct tcphdr *th = pkt->l4;

		if ((void *)(th + 1) > data_end)
			return;
		csum_replace4(&th->check, from, to);
		csum_replace2(&th->check, th->dest, f->dport);
		th->dest = f->dport;
	} else {
		struct udphdr *uh = pkt->l4;

		if ((void *)(uh + 1) > data_end)
			return;
		csum_udp_replace4(&uh->check, from, to);
		csum_udp_replace2(&uh->check, uh->dest, f->dport);
		uh->dest = f->dport;
	}
	csum_replace4(&iph->check, from, to);
	iph->daddr = to;
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

/* The reverse entry of a reply from a backend, or NULL when the packet is not one. */
static __always_inline struct bgs_reverse *nat_reverse_lookup(const struct bgs_pkt *pkt)
{
	struct bgs_backend_addr ba = {
		.addr = { pkt->key.saddr[0], pkt->key.saddr[1], pkt->key.saddr[2],
			  pkt->key.saddr[3] },
		.port = pkt->key.sport,
		.proto = pkt->key.proto,
		.family = pkt->key.family,
	};
	struct bgs_reverse *rev;

	if (!bpf_map_lookup_elem(&bgs_backend_addrs, &ba))
		return NULL;
	rev = bpf_map_lookup_elem(&bgs_reverse, &pkt->key);
	if (!rev)
		stat_inc(BGS_STAT_REPLY_NO_FLOW);
	return rev;
}

/* Rewrite a reply's source from backend to VIP with the skb checksum helpers, which also keep
 * CHECKSUM_PARTIAL and GSO packets right. Packet pointers are invalid afterwards.
 */
static __always_inline int nat_snat_tc(struct __sk_buff *skb, const struct bgs_pkt *pkt,
				       const struct bgs_reverse *rev)
{
	__u32 ip_csum = pkt->l3_off + offsetof(struct iphdr, check);
	__u32 ip_saddr = pkt->l3_off + offsetof(struct iphdr, saddr);
	__u32 from = pkt->key.saddr[0], to = rev->vaddr[0];
	__u16 pfrom = pkt->key.sport, pto = rev->vport;
	__u32 l4_csum, l4_port = pkt->l4_off; /* source port leads both headers */
	__u64 mangled = 0;

	if (pkt->key.proto == IPPROTO_TCP) {
		l4_csum = pkt->l4_off + offsetof(struct tcphdr, check);
	} else {
		l4_csum = pkt->l4_off + offsetof(struct udphdr, check);
		mangled = BPF_F_MARK_MANGLED_0;
	}

	if (bpf_l4_csum_replace(skb, l4_csum, from, to, BPF_F_PSEUDO_HDR | mangled | 4) ||
	    bpf_l4_csum_replace(skb, l4_csum, pfrom, pto, mangled | 2) ||
	    bpf_l3_csum_replace(skb, ip_csum, from, to, 4) ||
	    bpf_skb_store_bytes(skb, ip_saddr, &to, 4, 0) ||
	    bpf_skb_store_bytes(skb, l4_port, &pto, 2, 0))
		return -1;
	return 0;
}

#endif /* BGS_NAT_BPF_H */
