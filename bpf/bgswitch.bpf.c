// SPDX-License-Identifier: GPL-2.0
/* bgswitch.bpf.c: the data plane's entry points. Everything they call lives in the headers. */
#include "common.bpf.h"
#include "maps.bpf.h"
#include "parse.bpf.h"
#include "flow.bpf.h"
#include "nat.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* Ingress: a client packet for a VIP goes to its flow's backend, or starts a flow on the active
 * color. Everything else passes untouched.
 */
SEC("xdp")
int bgs_ingress(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct bgs_backend_stats *bs;
	struct bgs_pkt pkt = {};
	struct bgs_flow flow;
	struct bgs_vip *vip;
	int ret;

	stat_inc(BGS_STAT_RX);
	ret = parse_packet(data, data_end, &pkt);
	if (ret < 0) {
		stat_inc(-ret);
		return XDP_PASS;
	}

	vip = flow_service(&pkt);
	if (!vip) {
		stat_inc(BGS_STAT_NOT_VIP);
		return XDP_PASS;
	}
	stat_inc(BGS_STAT_VIP);

	ret = flow_steer(&pkt, vip->svc, &flow);
	if (ret != BGS_CONTINUE)
		return ret;

	nat_dnat_xdp(&pkt, &flow, data_end);
	bs = stat_backend(flow.slot);
	if (bs) {
		bs->rx_packets++;
		bs->rx_bytes += pkt.len;
	}
	return XDP_PASS;
}

/* Egress: a reply from a backend leaves with the VIP as its source. */
SEC("tc")
int bgs_egress(struct __sk_buff *skb)
{
	struct bgs_backend_stats *bs;
	struct bgs_reverse *rev;
	struct bgs_pkt pkt = {};
	void *data, *data_end;
	__u32 slot;

	stat_inc(BGS_STAT_TX);
	nat_pull(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (parse_packet(data, data_end, &pkt) < 0)
		return TC_ACT_OK;

	rev = nat_reverse_lookup(&pkt);
	if (!rev)
		return TC_ACT_OK;
	slot = rev->slot;
	if (pkt.key.proto == IPPROTO_TCP && (pkt.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		flow_mark_server(&pkt, rev);
	if (nat_snat_tc(skb, &pkt, rev))
		return TC_ACT_OK;

	stat_inc(BGS_STAT_REPLY_NAT);
	bs = stat_backend(slot);
	if (bs) {
		bs->tx_packets++;
		bs->tx_bytes += pkt.len;
		if (pkt.tcp_flags & TCP_FLAG_RST)
			bs->resets++;
	}
	return TC_ACT_OK;
}
