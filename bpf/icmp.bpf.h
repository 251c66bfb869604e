/* SPDX-License-Identifier: GPL-2.0 */
/* icmp.bpf.h: ICMP and ICMPv6 errors about a tracked flow, translated both ways. */
#ifndef BGS_ICMP_BPF_H
#define BGS_ICMP_BPF_H

#include "common.bpf.h"
#include "csum.bpf.h"
#include "maps.bpf.h"
#include "nat.bpf.h"
#include "parse.bpf.h"

/* The packet an ICMP error quotes. */
struct icmp_quote {
	struct bgs_flow_key key; /* as quoted: saddr/sport are the quoted packet's sender */
	void *l3;
	struct udphdr *l4; /* the first 8 bytes of the quoted TCP or UDP header */
	__u16 *l4_csum; /* the quoted transport checksum, NULL when it is not quoted */
};

/* Destination unreachable (fragmentation needed), packet too big, time exceeded, parameter
 * problem: the errors that quote the packet they are about.
 */
static __always_inline bool icmp_is_error(const struct bgs_pkt *pkt)
{
	__u8 t = pkt->icmp_type;

	if (pkt->key.family == BGS_AF_INET)
		return t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETERPROB;
	return t == ICMPV6_DEST_UNREACH || t == ICMPV6_PKT_TOOBIG || t == ICMPV6_TIME_EXCEED ||
	       t == ICMPV6_PARAMPROB;
}

/* Parse the quoted IP header and the first 8 bytes of its TCP or UDP header. Returns 0 or -1. */
static __always_inline int icmp_parse_quote(const struct bgs_pkt *pkt, void *data_end,
					    struct icmp_quote *q)
{
	void *pos = pkt->l4 + sizeof(struct icmphdr);
	/* The quote ends where the IP length says, whatever padding follows in the frame: every
	 * read is checked against both ends (data_end for the verifier, end for the meaning).
	 */
	void *end = pkt->l3 + pkt->len;
	__u32 hdrsize;
	__u8 proto;

	if (pkt->key.family == BGS_AF_INET) {
		struct iphdr *iph = pos;

		if ((void *)(iph + 1) > data_end || (void *)(iph + 1) > end || iph->version != 4 ||
		    iph->ihl < 5)
			return -1;
		if (iph->frag_off & bpf_htons(IP_OFFSET))
			return -1; /* it quotes a later fragment: no ports */
		hdrsize = iph->ihl * 4;
		proto = iph->protocol;
		q->key.saddr[0] = iph->saddr;
		q->key.daddr[0] = iph->daddr;
		q->l3 = iph;
	} else {
		struct ipv6hdr *ip6 = pos;

		if ((void *)(ip6 + 1) > data_end || (void *)(ip6 + 1) > end || ip6->version != 6)
			return -1;
		hdrsize = sizeof(*ip6);
		proto = ip6->nexthdr;
		__builtin_memcpy(q->key.saddr, &ip6->saddr, 16);
		__builtin_memcpy(q->key.daddr, &ip6->daddr, 16);
		q->l3 = ip6;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return -1;
	pos += hdrsize;
	q->l4 = pos;
	if ((void *)(q->l4 + 1) > data_end || (void *)(q->l4 + 1) > end)
		return -1;
	q->key.sport = q->l4->source;
	q->key.dport = q->l4->dest;
	q->key.proto = proto;
	q->key.family = pkt->key.family;
	if (proto == IPPROTO_UDP)
		q->l4_csum = &q->l4->check;
	else if (pos + offsetof(struct tcphdr, check) + 2 <= data_end &&
		 pos + offsetof(struct tcphdr, check) + 2 <= end)
		q->l4_csum = pos + offsetof(struct tcphdr, check);
	return 0;
}

/* Rewrite the quoted packet's source (src) or destination address and port, with the quoted
 * transport and IPv4 checksums. Returns the difference the ICMP checksum must take for it.
 */
static __always_inline __u32 icmp_rewrite_quote(struct icmp_quote *q, bool src, const __u32 *to,
						__u16 port, void *data_end)
{
	const __u32 *from = src ? q->key.saddr : q->key.daddr;
	__u32 d_addr = csum_diff_addr(0, from, to, q->key.family);
	__u16 *l4_csum = q->l4_csum, old;
	__u32 d_icmp = d_addr;

	if ((void *)(q->l4 + 1) > data_end)
		return 0;
	if (l4_csum && (void *)(l4_csum + 1) <= data_end) {
		__u32 d = csum_diff2(d_addr, src ? q->l4->source : q->l4->dest, port);

		old = *l4_csum;
		if (q->key.proto == IPPROTO_UDP)
			csum_apply_udp(l4_csum, d);
		else
			csum_apply(l4_csum, d);
		d_icmp = csum_diff2(d_icmp, old, *l4_csum);
	}
	if (src) {
		d_icmp = csum_diff2(d_icmp, q->l4->source, port);
		q->l4->source = port;
	} else {
		d_icmp = csum_diff2(d_icmp, q->l4->dest, port);
		q->l4->dest = port;
	}
	if (q->key.family == BGS_AF_INET) {
		struct iphdr *iph = q->l3;

		if ((void *)(iph + 1) > data_end)
			return 0;
		old = iph->check;
		csum_apply(&iph->check, d_addr);
		d_icmp = csum_diff2(d_icmp, old, iph->check);
		if (src)
			iph->saddr = to[0];
		else
			iph->daddr = to[0];
	} else {
		struct ipv6hdr *ip6 = q->l3;

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		if (src)
			__builtin_memcpy(&ip6->saddr, to, 16);
		else
			__builtin_memcpy(&ip6->daddr, to, 16);
	}
	return d_icmp;
}

/* Rewrite the outer destination (dst) or source address, with the outer IPv4 checksum; for
 * IPv6 the ICMPv6 checksum covers it through the pseudo-header, so its difference is returned.
 */
static __always_inline __u32 icmp_rewrite_outer(const struct bgs_pkt *pkt, bool dst,
						const __u32 *to, void *data_end)
{
	const __u32 *from = dst ? pkt->key.daddr : pkt->key.saddr;
	__u32 d_addr = csum_diff_addr(0, from, to, pkt->key.family);

	if (pkt->key.family == BGS_AF_INET) {
		struct iphdr *iph = pkt->l3;

		if ((void *)(iph + 1) > data_end)
			return 0;
		csum_apply(&iph->check, d_addr);
		if (dst)
			iph->daddr = to[0];
		else
			iph->saddr = to[0];
		return 0;
	} else {
		struct ipv6hdr *ip6 = pkt->l3;

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		if (dst)
			__builtin_memcpy(&ip6->daddr, to, 16);
		else
			__builtin_memcpy(&ip6->saddr, to, 16);
		return d_addr;
	}
}

static __always_inline void icmp_apply(const struct bgs_pkt *pkt, __u32 diff, void *data_end)
{
	struct icmphdr *ih = pkt->l4;

	if ((void *)(ih + 1) <= data_end)
		csum_apply(&ih->checksum, diff);
}

/* Ingress: an error about one of our replies (it quotes VIP:port -> client) goes to the
 * backend of that flow. Returns the verdict.
 */
static __always_inline int icmp_ingress(struct bgs_pkt *pkt, void *data_end)
{
	const struct bgs_backend *be;
	struct bgs_backend_stats *bs;
	struct icmp_quote q = {};
	struct bgs_vip_key vk = {};
	struct bgs_conn_key fk;
	struct bgs_vip *vip;
	struct bgs_flow *f;
	__u32 diff, slot;

	if (!icmp_is_error(pkt) || icmp_parse_quote(pkt, data_end, &q)) {
		stat_inc(BGS_STAT_NOT_VIP);
		return XDP_PASS;
	}
	__builtin_memcpy(vk.addr, q.key.saddr, sizeof(vk.addr));
	vk.port = q.key.sport;
	vk.proto = q.key.proto;
	vk.family = q.key.family;
	vip = bpf_map_lookup_elem(&bgs_vips, &vk);
	if (!vip) {
		stat_inc(BGS_STAT_NOT_VIP);
		return XDP_PASS;
	}
	flow_key(&fk, &q.key, false, vip->svc);
	f = bpf_map_lookup_elem(&bgs_flows, &fk);
	be = f ? flow_backend(f->slot) : NULL;
	if (!be || !addr_eq(pkt->key.daddr, q.key.saddr)) {
		stat_inc(BGS_STAT_ICMP_NO_FLOW);
		return XDP_PASS;
	}
	slot = f->slot;

	diff = icmp_rewrite_quote(&q, true, be->addr, be->port, data_end);
	diff += icmp_rewrite_outer(pkt, true, be->addr, data_end);
	icmp_apply(pkt, diff, data_end);

	stat_inc(BGS_STAT_ICMP_IN);
	bs = stat_backend(slot);
	if (bs) {
		bs->rx_packets++;
		bs->rx_bytes += pkt->len;
	}
	return XDP_PASS;
}

/* Egress: an error about a client's packet (it quotes client -> backend:port), whether the
 * backend or a router on the way sent it, leaves quoting the VIP instead; the backend's own
 * address as the outer source becomes the VIP too.
 */
static __always_inline void icmp_egress(const struct __sk_buff *skb, struct bgs_pkt *pkt,
					void *data_end)
{
	struct bgs_flow_key rt = {};
	struct bgs_backend_stats *bs;
	struct bgs_backend_ref *ref;
	struct bgs_service *svc;
	struct icmp_quote q = {};
	struct bgs_conn_key key;
	struct bgs_flow *f;
	__u32 diff, slot, id;
	__u32 *to;

	if (!icmp_is_error(pkt) || icmp_parse_quote(pkt, data_end, &q))
		return;
	ref = nat_backend_ref(q.key.daddr, q.key.dport, q.key.proto, q.key.family);
	if (!ref)
		return;
	/* The quoted packet went client -> backend: its flow is the one of a reply going back. */
	__builtin_memcpy(rt.saddr, q.key.daddr, sizeof(rt.saddr));
	__builtin_memcpy(rt.daddr, q.key.saddr, sizeof(rt.daddr));
	rt.sport = q.key.dport;
	rt.dport = q.key.sport;
	rt.proto = q.key.proto;
	rt.family = q.key.family;
	f = flow_of_reply(&rt, ref, &key);
	id = key.svc;
	/* From the backend's side, or made by the node itself (its "fragmentation needed"). */
	svc = NULL;
	if (f && (skb->ingress_ifindex == f->ifindex || !skb->ingress_ifindex))
		svc = bpf_map_lookup_elem(&bgs_services, &id);
	if (!svc) {
		stat_inc(BGS_STAT_ICMP_NO_FLOW);
		return;
	}
	to = svc->vip.addr;
	slot = f->slot;

	diff = icmp_rewrite_quote(&q, false, to, svc->vip.port, data_end);
	if (addr_eq(pkt->key.saddr, q.key.daddr))
		diff += icmp_rewrite_outer(pkt, false, to, data_end);
	icmp_apply(pkt, diff, data_end);

	stat_inc(BGS_STAT_ICMP_OUT);
	bs = stat_backend(slot);
	if (bs) {
		bs->tx_packets++;
		bs->tx_bytes += pkt->len;
	}
}

#endif /* BGS_ICMP_BPF_H */
