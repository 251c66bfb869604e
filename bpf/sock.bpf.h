/* SPDX-License-Identifier: GPL-2.0 */
/* sock.bpf.h: local clients: the cgroup socket hooks' backend choice, socket storage and counts. */
#ifndef BGS_SOCK_BPF_H
#define BGS_SOCK_BPF_H

#include "common.bpf.h"
#include "flow.bpf.h"
#include "maps.bpf.h"

/* A socket address hook's verdict: go on (the kernel's value for "allow"). */
#define SOCK_OK 1

/* Is this socket's network namespace one the operator named (`bgswitch local add`)? */
static __always_inline bool sock_in_scope(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);

	return bpf_map_lookup_elem(&bgs_local_netns, &cookie) != NULL;
}

/* The peer address of a socket address hook, in the data plane's form (IPv4 in addr[0]). */
static __always_inline void sock_peer(const struct bpf_sock_addr *ctx, __u8 family, __u32 *addr,
				      __u16 *port)
{
	if (family == BGS_AF_INET) {
		addr[0] = ctx->user_ip4;
		addr[1] = addr[2] = addr[3] = 0;
	} else {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	}
	*port = (__u16)ctx->user_port;
}

static __always_inline void sock_set_peer(struct bpf_sock_addr *ctx, __u8 family, const __u32 *addr,
					  __u16 port)
{
	if (family == BGS_AF_INET) {
		ctx->user_ip4 = addr[0];
	} else {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	}
	ctx->user_port = port;
}

/* Stop counting a socket on its backend: only while the slot still holds the backend it was
 * counted on (a slot freed by `backend del --force` and reused is another backend's count).
 */
static __always_inline void sock_uncount(struct bgs_sock *s)
{
	struct bgs_local_count *n;
	const struct bgs_backend *be;
	__u32 slot = s->slot;

	if (!(s->flags & BGS_SOCK_COUNTED))
		return;
	s->flags &= ~BGS_SOCK_COUNTED;
	be = flow_backend(slot);
	if (!be || be->svc != s->svc || be->port != s->be_port || !addr_eq(be->addr, s->be))
		return;
	n = bpf_map_lookup_elem(&bgs_local_counts, &slot);
	if (n && n->live)
		__sync_fetch_and_add(&n->live, -1);
}

/* The backend a new local socket of service vip gets, chosen as XDP chooses one for a new flow:
 * one read of the switch word, the color by the share, the backend by the color's lookup table.
 * The flow hash is the socket's cookie (its source port is not known before connect()); a split
 * by client goes by the network namespace's cookie (every socket of one namespace, one color).
 * Returns the slot's backend, or NULL when there is none to take it.
 */
static __always_inline const struct bgs_backend *
sock_pick(struct bpf_sock_addr *ctx, const struct bgs_vip *vip, __u32 *slot, __u8 *color)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct bgs_backend *be;
	struct bgs_switch sw;
	__u32 h, hs, why;

	if (flow_switch(vip->svc, &sw))
		return NULL;
	h = bgs_fmix32((__u32)cookie ^ (__u32)(cookie >> 32));
	hs = h;
	if (vip->flags & BGS_VIP_SPLIT_CLIENT) {
		cookie = bpf_get_netns_cookie(ctx);
		hs = bgs_fmix32((__u32)cookie ^ (__u32)(cookie >> 32) ^ 0x636c6e74);
	}
	*color = bgs_share_color(hs, sw.share);
	if (!flow_pick(bgs_set_index(vip->svc, *color, sw.set_sel >> (*color & 1)), h, slot, &why))
		return NULL;
	be = bpf_map_lookup_elem(&bgs_backends, slot);
	return be && be->state == BGS_BACKEND_ACTIVE ? be : NULL;
}

/* Does the socket's record still stand for service svc, on a backend that still serves it? */
static __always_inline bool sock_pinned(const struct bgs_sock *s, __u32 svc)
{
	const struct bgs_backend *be;

	if (!(s->flags & BGS_SOCK_COUNTED) || s->svc != svc)
		return false;
	be = flow_backend(s->slot);
	return be && be->svc == svc && be->port == s->be_port && addr_eq(be->addr, s->be);
}

/* Record a socket's new backend on it and count it as a live flow of that backend. */
static __always_inline void sock_pin(struct bgs_sock *s, const struct bgs_vip *vip,
				     const __u32 *addr, __u16 port, __u8 family,
				     const struct bgs_backend *be, __u32 slot, __u8 color)
{
	struct bgs_local_count *n;

	sock_uncount(s);
	__builtin_memcpy(s->vip, addr, sizeof(s->vip));
	__builtin_memcpy(s->be, be->addr, sizeof(s->be));
	s->vip_port = port;
	s->be_port = be->port;
	s->slot = slot;
	s->color = color;
	s->family = family;
	s->svc = vip->svc;
	/* Not in bgs_backend_stats: its new flows are those the guard expects replies to see. */
	n = bpf_map_lookup_elem(&bgs_local_counts, &slot);
	if (n) {
		__sync_fetch_and_add(&n->live, 1);
		__sync_fetch_and_add(&n->opened, 1);
		s->flags |= BGS_SOCK_COUNTED;
	}
}

/* connect() and sendmsg() of a socket in scope to a VIP: send it to its backend instead. A
 * socket keeps the backend it was given for that service (a connected socket has one peer; an
 * unconnected UDP socket sends every datagram to the VIP to the same backend).
 */
static __always_inline int sock_to_backend(struct bpf_sock_addr *ctx, __u8 family)
{
	struct bgs_vip_key vk = { .family = family };
	const struct bgs_backend *be;
	struct bgs_vip *vip;
	struct bgs_sock *s;
	__u32 slot = 0;
	__u8 color = 0;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SOCK_OK;
	vk.proto = ctx->protocol;
	sock_peer(ctx, family, vk.addr, &vk.port);
	vip = bpf_map_lookup_elem(&bgs_vips, &vk);
	if (!vip || !sock_in_scope(ctx))
		return SOCK_OK;
	s = bpf_sk_storage_get(&bgs_socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s)
		return SOCK_OK;
	if (!sock_pinned(s, vip->svc)) {
		be = sock_pick(ctx, vip, &slot, &color);
		if (!be)
			return SOCK_OK; /* no backend: the VIP itself, which refuses */
		sock_pin(s, vip, vk.addr, vk.port, family, be, slot, color);
	}
	sock_set_peer(ctx, family, s->be, s->be_port);
	return SOCK_OK;
}

/* recvmsg() and getpeername() of a socket the hooks sent to a backend: the application sees
 * the VIP it asked for as the peer.
 */
static __always_inline int sock_to_vip(struct bpf_sock_addr *ctx, __u8 family)
{
	struct bgs_sock *s;
	__u32 addr[4];
	__u16 port;

	s = bpf_sk_storage_get(&bgs_socks, ctx->sk, 0, 0);
	if (!s || s->family != family)
		return SOCK_OK;
	sock_peer(ctx, family, addr, &port);
	if (port == s->be_port && addr_eq(addr, s->be))
		sock_set_peer(ctx, family, s->vip, s->vip_port);
	return SOCK_OK;
}

#endif /* BGS_SOCK_BPF_H */
