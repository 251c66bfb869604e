/* SPDX-License-Identifier: GPL-2.0 */
/* parse.bpf.h: bounds-checked parsers: Ethernet and VLAN tags, IPv4, IPv6, TCP, UDP, ICMP. */
#ifndef BGS_PARSE_BPF_H
#define BGS_PARSE_BPF_H

#include "common.bpf.h"

/* Where the next header starts. Each parser advances it past the header it accepted. */
struct hdr_cursor {
	void *pos;
};

enum bgs_frag_kind {
	BGS_FRAG_NONE = 0,
	BGS_FRAG_FIRST, /* offset 0, more to come: holds the transport header */
	BGS_FRAG_LATER, /* offset > 0: no transport header */
};

/* What the switch needs to know of one packet. */
struct bgs_pkt {
	struct bgs_flow_key key; /* as seen on the wire: saddr/sport are the sender's */
	void *l3;
	void *l4; /* TCP, UDP or ICMP header; NULL for a later fragment */
	__u32 l3_off; /* from the start of the frame */
	__u32 l4_off;
	__u32 len; /* IP length (IPv6: header included), for byte counters */
	__u32 frag_id; /* IPv4 identification, or the IPv6 fragment header's (network order) */
	__u8 frag; /* enum bgs_frag_kind */
	__u8 tcp_flags;
	__u8 icmp_type;
};

/* The IPv6 fragment header (vmlinux.h has no uapi copy of it). */
struct bgs_frag6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | M */
	__be32 identification;
};

/* Returns the EtherType (network order) after at most two VLAN tags (802.1ad, 802.1Q), or -1. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end)
{
	struct ethhdr *eth = nh->pos;
	struct vlan_hdr *vlh;
	__u16 proto;
	int i;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	proto = eth->h_proto;
#pragma unroll
	for (i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		vlh = nh->pos;
		if ((void *)(vlh + 1) > data_end)
			return -1;
		nh->pos = vlh + 1;
		proto = vlh->h_vlan_encapsulated_proto;
	}
	return proto;
}

/* IPv4. room: bytes from the IP header to the end of the frame. Returns the protocol, or
 * -BGS_STAT_* naming why the packet is not parsed further.
 */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end, __u32 room,
				       struct bgs_pkt *pkt)
{
	struct iphdr *iph = nh->pos;
	__u32 hdrsize, tot_len;
	__u16 off;

	if ((void *)(iph + 1) > data_end)
		return -BGS_STAT_PARSE_IP_HDR;
	if (iph->version != 4 || iph->ihl < 5)
		return -BGS_STAT_PARSE_IP_HDR;
	hdrsize = iph->ihl * 4;
	if (nh->pos + hdrsize > data_end)
		return -BGS_STAT_PARSE_IP_HDR;
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < hdrsize || tot_len > room)
		return -BGS_STAT_PARSE_IP_LEN;
	off = bpf_ntohs(iph->frag_off);
	if (off & (IP_MF | IP_OFFSET)) {
		pkt->frag = off & IP_OFFSET ? BGS_FRAG_LATER : BGS_FRAG_FIRST;
		pkt->frag_id = iph->id;
	}
	nh->pos += hdrsize;
	pkt->l3 = iph;
	pkt->len = tot_len;
	pkt->key.saddr[0] = iph->saddr;
	pkt->key.daddr[0] = iph->daddr;
	pkt->key.family = BGS_AF_INET;
	return iph->protocol;
}

/* The documented range of BGS_MAX_EXTHDRS: within it every program verifies well under the
 * verifier's limit (tests/test_verifier.py), and the walk's furthest offset stays far below
 * PARSE_OFF_MAX.
 */
#if BGS_MAX_EXTHDRS < 1 || BGS_MAX_EXTHDRS > 8
#error "BGS_MAX_EXTHDRS must be from 1 to 8"
#endif

/* Largest offset from the start of the frame that the IPv6 walk takes or hands back: a bound
 * the verifier can see, so that data + offset plus a header is a packet pointer it can check.
 * The walk starts at most 62 bytes in (Ethernet, two tags, the IPv6 header) and goes past at
 * most 8 extension headers of at most 2048 bytes: 16,446 at most.
 */
#define PARSE_OFF_MAX 0x7fff

static __always_inline bool parse_is_exthdr(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_FRAGMENT;
}

/* What the IPv6 extension-header walk found. */
struct bgs_ip6_ext {
	__u32 frag_id; /* the last fragment header's identification (network order), or 0 */
	__u32 l4_off; /* where the upper-layer header starts, from the start of the frame */
	__u8 next; /* the upper-layer protocol */
	__u8 frag; /* enum bgs_frag_kind */
	__u16 pad;
};

/* Walk at most BGS_MAX_EXTHDRS extension headers (hop-by-hop, routing, destination options,
 * fragment) from offset off, where a header of type next starts. Returns 0 with *ext filled, or
 * -BGS_STAT_*. Offsets, not pointers, carry the walk, so that it hands back only scalars.
 */
static __always_inline int parse_ip6_walk(void *data, void *data_end, __u32 off, __u8 next,
					  struct bgs_ip6_ext *ext)
{
	struct ipv6_opt_hdr *oh;
	struct bgs_frag6 *fh;
	__u32 len;
	__u16 fo;
	int i;

	if (!ext || off > PARSE_OFF_MAX)
		return -BGS_STAT_PARSE_IP_HDR;
	ext->frag = BGS_FRAG_NONE;
	ext->frag_id = 0;
#pragma unroll
	for (i = 0; i < BGS_MAX_EXTHDRS; i++) {
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
			oh = data + off;
			if ((void *)(oh + 1) > data_end)
				return -BGS_STAT_PARSE_IP_HDR;
			len = (oh->hdrlen + 1) * 8;
			if (data + off + len > data_end)
				return -BGS_STAT_PARSE_IP_HDR;
			next = oh->nexthdr;
			off += len;
		} else if (next == IPPROTO_FRAGMENT) {
			fh = data + off;
			if ((void *)(fh + 1) > data_end)
				return -BGS_STAT_PARSE_IP_HDR;
			fo = bpf_ntohs(fh->frag_off);
			if (fo & 0xfff8)
				ext->frag = BGS_FRAG_LATER;
			else if (fo & 1)
				ext->frag = BGS_FRAG_FIRST;
			ext->frag_id = fh->identification;
			next = fh->nexthdr;
			off += sizeof(*fh);
		} else {
			break;
		}
	}
	if (parse_is_exthdr(next))
		return -BGS_STAT_EXTHDR_LIMIT;
	if (off > PARSE_OFF_MAX)
		return -BGS_STAT_PARSE_IP_HDR;
	ext->l4_off = off;
	ext->next = next;
	return 0;
}

/* The walk as a global subprogram, one per program type (its context differs): the verifier
 * checks it once on its own, and its caller sees only a scalar verdict and scalar results.
 * Inlined, each path through the walk left a different packet-pointer range, and everything
 * after it was verified once per path.
 */
__noinline int bgs_ip6_walk_xdp(struct xdp_md *ctx, __u32 off, __u32 next, struct bgs_ip6_ext *ext)
{
	return parse_ip6_walk((void *)(long)ctx->data, (void *)(long)ctx->data_end, off, next, ext);
}

__noinline int bgs_ip6_walk_tc(struct __sk_buff *skb, __u32 off, __u32 next,
			       struct bgs_ip6_ext *ext)
{
	return parse_ip6_walk((void *)(long)skb->data, (void *)(long)skb->data_end, off, next, ext);
}

/* IPv6 and its extension headers. ctx is the program's context (struct __sk_buff when tc,
 * struct xdp_md otherwise), data the start of its frame. Returns the upper-layer protocol with
 * nh->pos at its header, or -BGS_STAT_*.
 */
static __always_inline int parse_ip6hdr(void *ctx, bool tc, void *data, struct hdr_cursor *nh,
					void *data_end, __u32 room, struct bgs_pkt *pkt)
{
	struct ipv6hdr *ip6 = nh->pos;
	struct bgs_ip6_ext ext = {};
	__u32 plen, off;
	int ret;

	if ((void *)(ip6 + 1) > data_end)
		return -BGS_STAT_PARSE_IP_HDR;
	if (ip6->version != 6)
		return -BGS_STAT_PARSE_IP_HDR;
	plen = bpf_ntohs(ip6->payload_len);
	if (!plen || plen + sizeof(*ip6) > room)
		return -BGS_STAT_PARSE_IP_LEN; /* a jumbogram, or a length that lies */

	ext.next = ip6->nexthdr;
	if (!parse_is_exthdr(ext.next)) {
		/* The common case, no extension header, makes no call: a subprogram call costs a
		 * packet 10 to 16 ns here (README, "Verifier headroom").
		 */
		nh->pos = ip6 + 1;
	} else {
		off = (void *)(ip6 + 1) - data;
		if (tc)
			ret = bgs_ip6_walk_tc(ctx, off, ext.next, &ext);
		else
			ret = bgs_ip6_walk_xdp(ctx, off, ext.next, &ext);
		if (ret < 0)
			return ret;
		/* The transport header's pointer, derived afresh from the walk's scalar offset. */
		off = ext.l4_off;
		if (off > PARSE_OFF_MAX || data + off > data_end)
			return -BGS_STAT_PARSE_IP_HDR;
		nh->pos = data + off;
		if (ext.frag != BGS_FRAG_NONE)
			pkt->frag = ext.frag;
		pkt->frag_id = ext.frag_id;
	}

	pkt->l3 = ip6;
	pkt->len = plen + sizeof(*ip6);
	__builtin_memcpy(pkt->key.saddr, &ip6->saddr, 16);
	__builtin_memcpy(pkt->key.daddr, &ip6->daddr, 16);
	pkt->key.family = BGS_AF_INET6;
	return ext.next;
}

/* Returns the TCP flags byte, or -BGS_STAT_PARSE_L4. The whole header, options included,
 * must be in the packet.
 */
static __always_inline int parse_tcphdr(struct hdr_cursor *nh, void *data_end,
					struct tcphdr **tcphdr)
{
	struct tcphdr *th = nh->pos;
	__u32 hdrsize;

	if ((void *)(th + 1) > data_end)
		return -BGS_STAT_PARSE_L4;
	hdrsize = th->doff * 4;
	if (hdrsize < sizeof(*th) || nh->pos + hdrsize > data_end)
		return -BGS_STAT_PARSE_L4;
	nh->pos += hdrsize;
	*tcphdr = th;
	return ((__u8 *)th)[13];
}

/* Returns 0, or -BGS_STAT_PARSE_L4. */
static __always_inline int parse_udphdr(struct hdr_cursor *nh, void *data_end,
					struct udphdr **udphdr)
{
	struct udphdr *uh = nh->pos;

	if ((void *)(uh + 1) > data_end)
		return -BGS_STAT_PARSE_L4;
	if (bpf_ntohs(uh->len) < sizeof(*uh))
		return -BGS_STAT_PARSE_L4;
	nh->pos = uh + 1;
	*udphdr = uh;
	return 0;
}

static __always_inline bool parse_is_icmp(const struct bgs_pkt *pkt)
{
	return pkt->key.proto == (pkt->key.family == BGS_AF_INET6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP);
}

/* Fill pkt from a frame of frame_len bytes (data_end may end sooner on a non-linear skb); ctx
 * is the program's context, a struct __sk_buff when tc, else a struct xdp_md.
 * Returns 0 for a TCP, UDP or ICMP packet (or a later fragment, with no transport header), or
 * -BGS_STAT_* to count and pass untouched.
 */
static __always_inline int parse_packet(void *ctx, bool tc, void *data, void *data_end,
					__u32 frame_len, struct bgs_pkt *pkt)
{
	struct hdr_cursor nh = { .pos = data };
	struct tcphdr *th;
	struct udphdr *uh;
	int proto, ret;

	proto = parse_ethhdr(&nh, data_end);
	if (proto < 0)
		return -BGS_STAT_PARSE_L2;
	pkt->l3_off = nh.pos - data;
	if (pkt->l3_off > frame_len)
		return -BGS_STAT_PARSE_L2;
	if (proto == bpf_htons(ETH_P_IP))
		proto = parse_iphdr(&nh, data_end, frame_len - pkt->l3_off, pkt);
	else if (proto == bpf_htons(ETH_P_IPV6))
		proto = parse_ip6hdr(ctx, tc, data, &nh, data_end, frame_len - pkt->l3_off, pkt);
	else
		return -BGS_STAT_NOT_IP;
	if (proto < 0)
		return proto;
	pkt->l4_off = nh.pos - data;
	pkt->key.proto = proto;
	/* The IP length must cover every header read so far, and below, the transport header:
	 * nothing is read from Ethernet padding.
	 */
	if (pkt->len < (__u32)(nh.pos - pkt->l3))
		return -BGS_STAT_PARSE_IP_LEN;
	if (pkt->frag == BGS_FRAG_LATER)
		return 0;

	if (proto == IPPROTO_TCP) {
		ret = parse_tcphdr(&nh, data_end, &th);
		if (ret < 0)
			return ret;
		pkt->tcp_flags = ret;
		pkt->key.sport = th->source;
		pkt->key.dport = th->dest;
		pkt->l4 = th;
	} else if (proto == IPPROTO_UDP) {
		ret = parse_udphdr(&nh, data_end, &uh);
		if (ret < 0)
			return ret;
		pkt->key.sport = uh->source;
		pkt->key.dport = uh->dest;
		pkt->l4 = uh;
	} else if (parse_is_icmp(pkt)) {
		struct icmphdr *ih = nh.pos;

		if ((void *)(ih + 1) > data_end)
			return -BGS_STAT_PARSE_L4;
		nh.pos = ih + 1;
		pkt->icmp_type = ih->type;
		pkt->l4 = ih;
	} else {
		return -BGS_STAT_NOT_VIP;
	}
	if (pkt->len < (__u32)(nh.pos - pkt->l3))
		return -BGS_STAT_PARSE_IP_LEN;
	if (parse_is_icmp(pkt))
		return 0;
	if (!pkt->key.sport || !pkt->key.dport)
		return -BGS_STAT_ZERO_PORT;
	return 0;
}

#endif /* BGS_PARSE_BPF_H */
