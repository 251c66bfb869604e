/* SPDX-License-Identifier: GPL-2.0 */
/* parse.bpf.h: bounds-checked header parsers (Ethernet, one VLAN tag, IPv4, TCP, UDP). */
#ifndef BGS_PARSE_BPF_H
#define BGS_PARSE_BPF_H

#include "common.bpf.h"

/* Where the next header starts. Each parser advances it past the header it accepted. */
struct hdr_cursor {
	void *pos;
};

/* What the switch needs to know of one TCP or UDP packet. */
struct bgs_pkt {
	struct bgs_flow_key key; /* as seen on the wire: saddr/sport are the sender's */
	struct iphdr *iph;
	void *l4;
	__u32 l3_off; /* from the start of the frame */
	__u32 l4_off;
	__u32 len; /* IP total length, for byte counters */
	__u8 tcp_flags;
};

/* Returns the EtherType (network order) after at most one 802.1Q/802.1ad tag, or -1. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end)
{
	struct ethhdr *eth = nh->pos;
	struct vlan_hdr *vlh;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		vlh = nh->pos;
		if ((void *)(vlh + 1) > data_end)
			return -1;
		nh->pos = vlh + 1;
		proto = vlh->h_vlan_encapsulated_proto;
	}
	return proto;
}

/* Returns the IP protocol, or -BGS_STAT_* naming why the packet is not parsed further. */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end, struct iphdr **iphdr)
{
	struct iphdr *iph = nh->pos;
	__u32 hdrsize;

	if ((void *)(iph + 1) > data_end)
		return -BGS_STAT_PARSE_ERR;
	if (iph->version != 4 || iph->ihl < 5)
		return -BGS_STAT_PARSE_ERR;
	hdrsize = iph->ihl * 4;
	if (nh->pos + hdrsize > data_end || bpf_ntohs(iph->tot_len) < hdrsize)
		return -BGS_STAT_PARSE_ERR;
	if (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -BGS_STAT_FRAGMENT;
	nh->pos += hdrsize;
	*iphdr = iph;
	return iph->protocol;
}

/* Returns the TCP flags byte, or -BGS_STAT_PARSE_ERR. The whole header, options included,
 * must be in the packet.
 */
static __always_inline int parse_tcphdr(struct hdr_cursor *nh, void *data_end,
					struct tcphdr **tcphdr)
{
	struct tcphdr *th = nh->pos;
	__u32 hdrsize;

	if ((void *)(th + 1) > data_end)
		return -BGS_STAT_PARSE_ERR;
	hdrsize = th->doff * 4;
	if (hdrsize < sizeof(*th) || nh->pos + hdrsize > data_end)
		return -BGS_STAT_PARSE_ERR;
	nh->pos += hdrsize;
	*tcphdr = th;
	return ((__u8 *)th)[13];
}

/* Returns 0, or -BGS_STAT_PARSE_ERR. */
static __always_inline int parse_udphdr(struct hdr_cursor *nh, void *data_end,
					struct udphdr **udphdr)
{
	struct udphdr *uh = nh->pos;

	if ((void *)(uh + 1) > data_end)
		return -BGS_STAT_PARSE_ERR;
	if (bpf_ntohs(uh->len) < sizeof(*uh))
		return -BGS_STAT_PARSE_ERR;
	nh->pos = uh + 1;
	*udphdr = uh;
	return 0;
}

/* Fill pkt from an IPv4 TCP or UDP frame. Returns 0, or -BGS_STAT_* to count and pass. */
static __always_inline int parse_packet(void *data, void *data_end, struct bgs_pkt *pkt)
{
	struct hdr_cursor nh = { .pos = data };
	struct tcphdr *th;
	struct udphdr *uh;
	struct iphdr *iph;
	int proto, ret;

	proto = parse_ethhdr(&nh, data_end);
	if (proto != bpf_htons(ETH_P_IP))
		return proto < 0 ? -BGS_STAT_PARSE_ERR : -BGS_STAT_NOT_IP;

	pkt->l3_off = nh.pos - data;
	proto = parse_iphdr(&nh, data_end, &iph);
	if (proto < 0)
		return proto;
	pkt->l4_off = nh.pos - data;

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
	} else {
		return -BGS_STAT_NOT_VIP;
	}
	/* The IP total length must cover the transport header: no header read from padding. */
	if (bpf_ntohs(iph->tot_len) < (__u32)(nh.pos - (void *)iph))
		return -BGS_STAT_PARSE_ERR;

	pkt->iph = iph;
	pkt->len = bpf_ntohs(iph->tot_len);
	pkt->key.saddr[0] = iph->saddr;
	pkt->key.daddr[0] = iph->daddr;
	pkt->key.proto = proto;
	pkt->key.family = BGS_AF_INET;
	return 0;
}

#endif /* BGS_PARSE_BPF_H */
