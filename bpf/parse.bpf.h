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

/* IPv6, walking at most BGS_MAX_EXTHDRS extension headers (hop-by-hop, routing, destination
 * options, fragment). Returns the upper-layer protocol, or -BGS_STAT_*.
 */
static __always_inline int parse_ip6hdr(struct hdr_cursor *nh, void *data_end, __u32 room,
					struct bgs_pkt *pkt)
{
	struct ipv6hdr *ip6 = nh->pos;
	struct ipv6_opt_hdr *oh;
	struct bgs_frag6 *fh;
	__u32 plen;
	__u8 next;
	__u16 off;
	int i;

	if ((void *)(ip6 + 1) > data_end)
		return -BGS_STAT_PARSE_IP_HDR;
	if (ip6->version != 6)
		return -BGS_STAT_PARSE_IP_HDR;
	plen = bpf_ntohs(ip6->payload_len);
	if (!plen || plen + sizeof(*ip6) > room)
		return -BGS_STAT_PARSE_IP_LEN; /* a jumbogram, or a length that lies */
	nh->pos = ip6 + 1;
	next = ip6->nexthdr;

#pragma unroll
	for (i = 0; i < BGS_MAX_EXTHDRS; i++) {
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
			oh = nh->pos;
			if ((void *)(oh + 1) > data_end ||
			    nh->pos + (oh->hdrlen + 1) * 8 > data_end)
				return -BGS_STAT_PARSE_IP_HDR;
			next = oh->nexthdr;
			nh->pos += (oh->hdrlen + 1) * 8;
		} else if (next == IPPROTO_FRAGMENT) {
			fh = nh->pos;
			if ((void *)(fh + 1) > data_end)
				return -BGS_STAT_PARSE_IP_HDR;
			off = bpf_ntohs(fh->frag_off);
			if (off & 0xfff8)
				pkt->frag = BGS_FRAG_LATER;
			else if (off & 1)
				pkt->frag = BGS_FRAG_FIRST;
			pkt->frag_id = fh->identification;
			next = fh->nexthdr;
			nh->pos = fh + 1;
		} else {
			break;
		}
	}
	if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	    next == IPPROTO_FRAGMENT)
		return -BGS_STAT_EXTHDR_LIMIT;

	pkt->l3 = ip6;
	pkt->len = plen + sizeof(*ip6);
	__builtin_memcpy(pkt->key.saddr, &ip6->saddr, 16);
	__builtin_memcpy(pkt->key.daddr, &ip6->daddr, 16);
	pkt->key.family = BGS_AF_INET6;
	return next;
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

/* Fill pkt from a frame of frame_len bytes (data_end may end sooner on a non-linear skb).
 * Returns 0 for a TCP, UDP or ICMP packet (or a later fragment, with no transport header), or
 * -BGS_STAT_* to count and pass untouched.
 */
static __always_inline int parse_packet(void *data, void *data_end, __u32 frame_len,
					struct bgs_pkt *pkt)
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
		proto = parse_ip6hdr(&nh, data_end, frame_len - pkt->l3_off, pkt);
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
