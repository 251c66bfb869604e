// SPDX-License-Identifier: GPL-2.0
/* bgswitch.bpf.c: the data plane's entry points. Everything they call lives in the headers. */
#include "common.bpf.h"
#include "maps.bpf.h"
#include "parse.bpf.h"
#include "fwd.bpf.h"
#include "flow.bpf.h"
#include "frag.bpf.h"
#include "nat.bpf.h"
#include "icmp.bpf.h"
#include "sock.bpf.h"

char LICENSE[] SEC("license") = "GPL";

static __always_inline void count_rx(__u32 slot, __u32 len)
{
	struct bgs_backend_stats *bs = stat_backend(slot);

	if (bs) {
		bs->rx_packets++;
		bs->rx_bytes += len;
	}
}

/* Ingress: a client packet for a VIP goes to its flow's backend, or starts a flow on the active
 * color; a later fragment follows its first fragment (untouched when that went to no service);
 * an ICMP error about a reply goes to that reply's backend. Rewritten packets leave by the fast
 * path where it can take them. Everything else passes untouched.
 */
SEC("xdp")
int bgs_ingress(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct bgs_pkt pkt = {};
	struct bgs_dest dest;
	struct bgs_frag *fr;
	struct bgs_vip *vip;
	int ret;

	stat_inc(BGS_STAT_RX);
	ret = parse_packet(ctx, false, data, data_end, data_end - data, &pkt);
	if (ret < 0) {
		stat_inc(-ret);
		return XDP_PASS;
	}

	if (pkt.frag == BGS_FRAG_LATER) {
		fr = frag_lookup(&pkt);
		if (!fr) {
			if (frag_to_vip(&pkt))
				return stat_drop_node(BGS_DROP_FRAG_MISS);
			stat_inc(BGS_STAT_NOT_VIP);
			return XDP_PASS;
		}
		if (frag_is_pass(fr)) {
			stat_inc(BGS_STAT_FRAG_PASS);
			return XDP_PASS;
		}
		stat_inc(BGS_STAT_FRAG_LATER);
		count_rx(fr->slot, pkt.len);
		nat_dnat_xdp(&pkt, fr->addr, 0, data_end);
		return fwd_xdp(ctx, &pkt, data, data_end,
			       fwd_nexthop(ctx, &pkt, fr->slot, fr->addr, pkt.key.dport,
					   bpf_ktime_get_coarse_ns()));
	}
	if (parse_is_icmp(&pkt)) {
		if (!icmp_is_error(&pkt))
			frag_pass(&pkt);
		return icmp_ingress(&pkt, data_end);
	}

	vip = flow_service(&pkt);
	if (!vip) {
		frag_pass(&pkt);
		stat_inc(BGS_STAT_NOT_VIP);
		return XDP_PASS;
	}
	stat_inc(BGS_STAT_VIP);

	ret = flow_steer(ctx, &pkt, vip, &dest);
	if (ret != BGS_CONTINUE)
		return ret;

	frag_track(&pkt, dest.be->addr, dest.slot);
	nat_dnat_xdp(&pkt, dest.be->addr, dest.be->port, data_end);
	count_rx(dest.slot, pkt.len);
	return fwd_xdp(ctx, &pkt, data, data_end, dest.nh);
}

/* Egress: a reply from a backend leaves with the VIP as its source (its later fragments too),
 * and an ICMP error about a client's packet leaves quoting the VIP.
 */
SEC("tc")
int bgs_egress(struct __sk_buff *skb)
{
	struct bgs_backend_stats *bs;
	struct bgs_service *svc;
	struct bgs_pkt pkt = {};
	struct bgs_conn_key key;
	void *data, *data_end;
	struct bgs_frag *fr;
	struct bgs_flow *f;
	__u32 to[4], slot, id;
	__u16 port;

	stat_inc(BGS_STAT_TX);
	nat_pull(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (parse_packet(skb, true, data, data_end, skb->len, &pkt) < 0)
		return TC_ACT_OK;

	if (pkt.frag == BGS_FRAG_LATER) {
		fr = frag_lookup(&pkt);
		if (!fr || frag_is_pass(fr))
			return TC_ACT_OK;
		__builtin_memcpy(to, fr->addr, sizeof(to));
		slot = fr->slot;
		port = 0;
	} else if (parse_is_icmp(&pkt)) {
		icmp_egress(skb, &pkt, data_end);
		return TC_ACT_OK;
	} else {
		f = nat_reply_flow(skb, &pkt, &key);
		if (!f)
			return TC_ACT_OK;
		id = key.svc;
		svc = bpf_map_lookup_elem(&bgs_services, &id);
		if (!svc)
			return TC_ACT_OK;
		__builtin_memcpy(to, svc->vip.addr, sizeof(to));
		port = svc->vip.port;
		slot = f->slot;
		if (pkt.key.proto == IPPROTO_TCP)
			flow_mark(f, pkt.tcp_flags, BGS_FLOW_FIN_SERVER, BGS_FLOW_SERVER_ON,
				  BGS_FLOW_RST | BGS_FLOW_RST_SERVER);
		frag_track(&pkt, to, slot);
	}
	if (nat_snat_tc(skb, &pkt, to, port))
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

/* Local clients (cgroup v2 hooks at the root, for the network namespaces named with `bgswitch
 * local add`): a socket's connect() or sendmsg() to a VIP goes to a backend chosen once, as a
 * new flow's is; recvmsg() and getpeername() show the VIP; the backend's live count falls when
 * the socket is released.
 */
SEC("cgroup/connect4")
int bgs_connect4(struct bpf_sock_addr *ctx)
{
	return sock_to_backend(ctx, BGS_AF_INET);
}

SEC("cgroup/connect6")
int bgs_connect6(struct bpf_sock_addr *ctx)
{
	return sock_to_backend(ctx, BGS_AF_INET6);
}

SEC("cgroup/sendmsg4")
int bgs_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_to_backend(ctx, BGS_AF_INET);
}

SEC("cgroup/sendmsg6")
int bgs_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_to_backend(ctx, BGS_AF_INET6);
}

SEC("cgroup/recvmsg4")
int bgs_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_to_vip(ctx, BGS_AF_INET);
}

SEC("cgroup/recvmsg6")
int bgs_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_to_vip(ctx, BGS_AF_INET6);
}

SEC("cgroup/getpeername4")
int bgs_peername4(struct bpf_sock_addr *ctx)
{
	return sock_to_vip(ctx, BGS_AF_INET);
}

SEC("cgroup/getpeername6")
int bgs_peername6(struct bpf_sock_addr *ctx)
{
	return sock_to_vip(ctx, BGS_AF_INET6);
}

SEC("cgroup/sock_release")
int bgs_release(struct bpf_sock *ctx)
{
	struct bgs_sock *s = bpf_sk_storage_get(&bgs_socks, ctx, 0, 0);

	if (s)
		sock_uncount(s);
	return 1;
}
