/* SPDX-License-Identifier: GPL-2.0 */
/* flow.bpf.h: service lookup, the flow table (one entry per connection), and new flows' backends. */
#ifndef BGS_FLOW_BPF_H
#define BGS_FLOW_BPF_H

#include "common.bpf.h"
#include "fwd.bpf.h"
#include "maps.bpf.h"
#include "parse.bpf.h"

static __always_inline __u32 flow_rotl(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 flow_mix(__u32 h, __u32 w)
{
	w *= 0xcc9e2d51;
	w = flow_rotl(w, 15);
	w *= 0x1b873593;
	h ^= w;
	h = flow_rotl(h, 13);
	return h * 5 + 0xe6546b64;
}

/* Hash of the client-to-VIP 5-tuple (murmur3-style); tests/lib/model.py mirrors it. */
static __always_inline __u32 flow_hash(const struct bgs_flow_key *k)
{
	__u32 h = 0x62677377; /* "bgsw" */
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		h = flow_mix(h, k->saddr[i]);
		h = flow_mix(h, k->daddr[i]);
	}
	h = flow_mix(h, ((__u32)k->sport << 16) | k->dport);
	h = flow_mix(h, k->proto);
	return bgs_fmix32(h);
}

/* Hash of the client's address alone, for a split between colors by client. */
static __always_inline __u32 flow_client_hash(const struct bgs_flow_key *k)
{
	__u32 h = 0x636c6e74; /* "clnt" */
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		h = flow_mix(h, k->saddr[i]);
	h = flow_mix(h, k->family);
	return bgs_fmix32(h);
}

/* The service a packet is addressed to, or NULL when it is not ours: the VIP filter first, then
 * the exact lookup.
 */
static __always_inline struct bgs_vip *flow_service(const struct bgs_pkt *pkt)
{
	__u32 bit = bgs_vip_filter_bit(pkt->key.daddr), word = bit >> 6;
	struct bgs_vip_key vk = {};
	__u64 *w;

	w = bpf_map_lookup_elem(&bgs_vip_filter, &word);
	if (!w || !(*w & (1ULL << (bit & 63))))
		return NULL;
	__builtin_memcpy(vk.addr, pkt->key.daddr, sizeof(vk.addr));
	vk.port = pkt->key.dport;
	vk.proto = pkt->key.proto;
	vk.family = pkt->key.family;
	return bpf_map_lookup_elem(&bgs_vips, &vk);
}

/* Where a client packet goes: its backend, and the next hop toward it. */
struct bgs_dest {
	const struct bgs_backend *be;
	struct bgs_nexthop *nh;
	__u32 slot;
};

/* The flow-table key of a connection: its client's address and port, and its service. */
static __always_inline void flow_key(struct bgs_conn_key *k, const struct bgs_flow_key *t,
				     bool client_is_src, __u32 svc)
{
	__builtin_memcpy(k->caddr, client_is_src ? t->saddr : t->daddr, sizeof(k->caddr));
	k->cport = client_is_src ? t->sport : t->dport;
	k->svc = svc;
	k->proto = t->proto;
	k->family = t->family;
	k->pad = 0;
}

/* A time in the units of bgs_flow.seen. */
static __always_inline __u32 flow_units(__u64 ns)
{
	return ns >> BGS_SEEN_SHIFT;
}

/* How long ago a flow's client was last seen, in ns (0 if another CPU saw it after now). */
static __always_inline __u64 flow_age(const struct bgs_flow *f, __u32 now)
{
	__s32 d = now - f->seen;

	return d > 0 ? (__u64)d << BGS_SEEN_SHIFT : 0;
}

static __always_inline bool flow_is_syn(const struct bgs_pkt *pkt)
{
	return (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* Closed: a TCP flow after an RST (until both sides go on) or a FIN from each side. */
static __always_inline bool flow_is_closed(const struct bgs_flow *f, __u8 proto)
{
	return proto == IPPROTO_TCP &&
	       ((f->state & BGS_FLOW_RST) || (f->state & BGS_FLOW_BOTH_FIN) == BGS_FLOW_BOTH_FIN);
}

/* A flow that a new first packet may replace: closed, or idle past its protocol's timeout. */
static __always_inline bool flow_is_dead(const struct bgs_flow *f, __u8 proto, __u32 now,
					 const struct bgs_config *cfg)
{
	return flow_is_closed(f, proto) ||
	       flow_age(f, now) > (proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns);
}

/* A flow whose packets are no longer translated: idle past its timeout, or closed for longer
 * than the closing timeout. A flow closed only by its client's RST keeps the idle timeout: the
 * backend may not have taken that RST (a spoofed one), and the connection go on.
 */
static __always_inline bool flow_is_expired(const struct bgs_flow *f, __u8 proto, __u32 now,
					    const struct bgs_config *cfg)
{
	if (flow_is_closed(f, proto) && ((f->state & BGS_FLOW_RST_SERVER) ||
					 (f->state & BGS_FLOW_BOTH_FIN) == BGS_FLOW_BOTH_FIN))
		return flow_age(f, now) > cfg->closing_ns;
	return flow_age(f, now) > (proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns);
}

/* Record one side's TCP flags on its flow: its FIN, and its RST (rst: the bits an RST from that
 * side sets). An RST makes the flow closed; a segment without RST from each side after it (on:
 * that side's bit) makes it live again, since the RST did not end the connection (an
 * out-of-window or spoofed RST, which the peer ignores, RFC 5961).
 */
static __always_inline void flow_mark(struct bgs_flow *f, __u8 flags, __u32 fin, __u32 on,
				      __u32 rst)
{
	__u32 st = f->state;

	if (flags & TCP_FLAG_RST) {
		if ((st & (rst | BGS_FLOW_BOTH_ON)) != rst) {
			__sync_fetch_and_and(&f->state, ~BGS_FLOW_BOTH_ON);
			__sync_fetch_and_or(&f->state, rst);
		}
		return;
	}
	if ((flags & TCP_FLAG_FIN) && !(st & fin))
		__sync_fetch_and_or(&f->state, fin);
	if ((st & BGS_FLOW_RST) && !(st & on)) {
		st = __sync_fetch_and_or(&f->state, on) | on;
		if ((st & BGS_FLOW_BOTH_ON) == BGS_FLOW_BOTH_ON)
			__sync_fetch_and_and(&f->state, ~(BGS_FLOW_RST | BGS_FLOW_RST_SERVER |
							  BGS_FLOW_BOTH_ON));
	}
}

/* Record a client packet on its flow: the time (at most every BGS_TOUCH_NS), FIN and RST. */
static __always_inline void flow_touch(const struct bgs_pkt *pkt, struct bgs_flow *f, __u32 now)
{
	if ((__s32)(now - f->seen) > (__s32)(BGS_TOUCH_NS >> BGS_SEEN_SHIFT))
		f->seen = now;
	if (pkt->key.proto == IPPROTO_TCP)
		flow_mark(f, pkt->tcp_flags, BGS_FLOW_FIN_CLIENT, BGS_FLOW_CLIENT_ON, BGS_FLOW_RST);
}

/* May this CPU insert one more flow now? A token bucket refilled at cfg->new_flow_rate per
 * second (this CPU's part of the node's rate), in millionths of an insert so that slow rates
 * still refill.
 */
static __always_inline bool flow_insert_allowed(const struct bgs_config *cfg, __u64 now)
{
	struct bgs_bucket *b;
	__u32 zero = 0;
	__u64 cap;

	if (!cfg->new_flow_rate)
		return true;
	b = bpf_map_lookup_elem(&bgs_insert_budget, &zero);
	if (!b)
		return true;
	cap = (__u64)(cfg->new_flow_burst + 1) * 1000000;
	if (now > b->last_ns) {
		/* rate inserts per second = rate millionths per microsecond; the elapsed time is
		 * capped (the bucket is full long before) so that the product cannot overflow.
		 */
		__u64 us = (now - b->last_ns) / 1000;
		__u64 add = (us > 1000000000ULL ? 1000000000ULL : us) * cfg->new_flow_rate;

		b->tokens = b->tokens + add > cap ? cap : b->tokens + add;
		b->last_ns = now;
	}
	if (b->tokens < 1000000)
		return false;
	b->tokens -= 1000000;
	return true;
}

/* The switch word of a service, read with one 8-byte load: the colors and the set buffers in
 * it always come from the same write.
 */
static __always_inline int flow_switch(__u32 svc, struct bgs_switch *sw)
{
	__u64 *word = bpf_map_lookup_elem(&bgs_switch, &svc);

	if (!word)
		return -1;
	*(__u64 *)sw = *(volatile __u64 *)word;
	return 0;
}

/* The backend slot a new flow of one color gets: position h % M of the color's lookup table,
 * or, for a service without tables (`--lb modulo`), entry h % count of its set. Returns true
 * with *slot set, or false with the drop reason in *why.
 */
static __always_inline bool flow_pick(__u32 idx, __u32 h, __u32 *slot, __u32 *why)
{
	__u32 zero = 0, pos, m, *e;
	struct bgs_set *set;
	void *table;

	table = bpf_map_lookup_elem(&bgs_tables, &idx);
	if (table) {
		e = bpf_map_lookup_elem(table, &zero);
		if (!e || !*e) {
			*why = BGS_DROP_NO_BACKEND;
			return false;
		}
		m = *e;
		pos = BGS_TABLE_HDR + h % m;
		e = bpf_map_lookup_elem(table, &pos);
		if (!e) {
			*why = BGS_DROP_BAD_BACKEND;
			return false;
		}
		*slot = *e;
		return true;
	}
	set = bpf_map_lookup_elem(&bgs_sets, &idx);
	*why = BGS_DROP_NO_BACKEND;
	if (!set || !set->count)
		return false;
	m = set->count;
	*why = BGS_DROP_BAD_BACKEND;
	if (m > BGS_MAX_BACKENDS)
		return false;
	pos = h % m;
	/* Hide the modulo's range from the compiler so that it keeps the mask the verifier needs. */
	asm volatile("" : "+r"(pos));
	*slot = set->slot[pos & (BGS_MAX_BACKENDS - 1)];
	return true;
}

/* The backend of a slot, or NULL when the slot is free. */
static __always_inline const struct bgs_backend *flow_backend(__u32 slot)
{
	struct bgs_backend *be = bpf_map_lookup_elem(&bgs_backends, &slot);

	return be && be->state != BGS_BACKEND_FREE ? be : NULL;
}

/* While the last change drains, non-SYN misses are re-pinned by the share before it. */
static __always_inline bool flow_draining(const struct bgs_switch *sw)
{
	return (sw->flags & (BGS_SW_DRAINING | BGS_SW_HAS_PREV)) ==
	       (BGS_SW_DRAINING | BGS_SW_HAS_PREV);
}

/* Whether a miss gets a flow entry: not an RST (it opens nothing), and not over the insert
 * budget.
 */
enum { FLOW_TRACK, FLOW_RST, FLOW_UNTRACKED };

static __always_inline __u32 flow_track(const struct bgs_pkt *pkt, const struct bgs_config *cfg,
					__u64 now)
{
	if (pkt->key.proto == IPPROTO_TCP && (pkt->tcp_flags & TCP_FLAG_RST))
		return FLOW_RST;
	return flow_insert_allowed(cfg, now) ? FLOW_TRACK : FLOW_UNTRACKED;
}

/* Pick a backend of `color` for a new flow whose hash is h, and record the flow when track is
 * FLOW_TRACK: an RST opens nothing, and over the insert budget (a flood) the packet still goes
 * where its flow belongs, only its entry is skipped. Returns BGS_CONTINUE with *dest filled, or
 * XDP_DROP with the reason counted.
 */
static __always_inline int flow_create(struct xdp_md *ctx, const struct bgs_pkt *pkt,
				       const struct bgs_conn_key *key, __u8 color, __u32 h,
				       const struct bgs_switch *sw, __u32 track, __u64 now,
				       struct bgs_dest *dest)
{
	bool tcp = pkt->key.proto == IPPROTO_TCP;
	bool first = !tcp || flow_is_syn(pkt);
	struct bgs_backend_stats *bs;
	struct bgs_flow f = {};
	__u32 slot = 0, why = 0;

	if (!flow_pick(bgs_set_index(key->svc, color, sw->set_sel >> (color & 1)), h, &slot, &why))
		return stat_drop(key->svc, why);
	dest->be = bpf_map_lookup_elem(&bgs_backends, &slot);
	if (!dest->be || dest->be->state != BGS_BACKEND_ACTIVE)
		return stat_drop(key->svc, BGS_DROP_BAD_BACKEND);
	dest->slot = slot;
	dest->nh = fwd_nexthop(ctx, pkt, slot, dest->be->addr, dest->be->port, now);
	bs = stat_backend(slot);
	if (track != FLOW_TRACK) {
		stat_inc(track == FLOW_RST ? BGS_STAT_RST_MISS : BGS_STAT_UNTRACKED);
		/* A backend's new flows: its entries, and the flows it got without one. */
		if (bs && first && track == FLOW_UNTRACKED)
			bs->new_flows++;
		return BGS_CONTINUE;
	}
	f.slot = slot;
	f.color = color;
	f.state = tcp && flow_is_syn(pkt) ? BGS_FLOW_SYN : 0;
	if (tcp && (pkt->tcp_flags & TCP_FLAG_FIN))
		f.state |= BGS_FLOW_FIN_CLIENT;
	f.ifindex = dest->nh ? dest->nh->ifindex : 0;
	f.seen = flow_units(now);
	if (bpf_map_update_elem(&bgs_flows, key, &f, BPF_ANY))
		return stat_drop(key->svc, BGS_DROP_FLOW_INSERT);
	stat_inc(BGS_STAT_FLOW_NEW);
	if (bs)
		bs->new_flows++;
	return BGS_CONTINUE;
}

/* Follow a live flow entry: record the packet on it, and keep its reply interface current. */
static __always_inline void flow_follow(struct xdp_md *ctx, const struct bgs_pkt *pkt,
					struct bgs_flow *f, __u64 now, struct bgs_dest *dest)
{
	stat_inc(BGS_STAT_FLOW_HIT);
	flow_touch(pkt, f, flow_units(now));
	dest->slot = f->slot;
	dest->nh = fwd_nexthop(ctx, pkt, dest->slot, dest->be->addr, dest->be->port, now);
	if (dest->nh && dest->nh->ifindex && dest->nh->ifindex != f->ifindex)
		f->ifindex = dest->nh->ifindex;
}

/* Count a miss, and return the share that places it: a TCP segment without SYN (its entry is
 * gone: evicted, or collected after a long idle) and a UDP flow whose entry expired are
 * re-pinned where their flow can be: while the last change drains, by the share before it (a
 * second chance, as GLB and Beamer give), since that is where flows older than the change live;
 * otherwise by the share now.
 */
static __always_inline __u32 flow_miss_share(const struct bgs_pkt *pkt, bool first, bool had,
					     __u32 svc, const struct bgs_switch *sw)
{
	struct bgs_service_stats *ss = stat_service(svc);
	bool tcp = pkt->key.proto == IPPROTO_TCP;
	bool draining = flow_draining(sw);

	if (!first) {
		stat_inc(BGS_STAT_NOSYN_MISS);
		if (ss)
			ss->nosyn_miss++;
	} else if (had) {
		stat_inc(BGS_STAT_FLOW_REOPEN);
		if (ss)
			ss->reopen++;
		if (tcp || !draining)
			return sw->share;
	} else {
		if (tcp) {
			stat_inc(BGS_STAT_SYN_MISS);
			if (ss)
				ss->syn_miss++;
		}
		return sw->share;
	}
	stat_inc(BGS_STAT_SECOND_CHANCE);
	if (ss)
		ss->second_chance++;
	return draining ? sw->prev_share : sw->share;
}

/* Find the flow of a client packet, or start one. Returns BGS_CONTINUE with *dest set to where
 * the packet goes, or a verdict.
 */
static __always_inline int flow_steer(struct xdp_md *ctx, const struct bgs_pkt *pkt,
				      const struct bgs_vip *vip, struct bgs_dest *dest)
{
	bool first = pkt->key.proto == IPPROTO_TCP ? flow_is_syn(pkt) : true;
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 zero = 0, h, hs, share, track;
	struct bgs_conn_key key;
	struct bgs_config *cfg;
	struct bgs_switch sw;
	struct bgs_flow *f;

	cfg = bpf_map_lookup_elem(&bgs_config, &zero);
	if (!cfg)
		return XDP_PASS;
	flow_key(&key, &pkt->key, true, vip->svc);
	f = bpf_map_lookup_elem(&bgs_flows, &key);
	if (f) {
		dest->be = flow_backend(f->slot);
		if (!dest->be)
			f = NULL;
		else if (!(first && flow_is_dead(f, pkt->key.proto, flow_units(now), cfg))) {
			flow_follow(ctx, pkt, f, now, dest);
			return BGS_CONTINUE;
		} else if (pkt->key.proto == IPPROTO_TCP) {
			/* A new connection on a dead entry: the entry goes now, so that, recorded or
			 * not (over the insert budget), its next segments never follow the old one.
			 */
			bpf_map_delete_elem(&bgs_flows, &key);
		}
	}
	if (flow_switch(vip->svc, &sw))
		return stat_drop(vip->svc, BGS_DROP_NO_BACKEND);
	share = flow_miss_share(pkt, first, f, vip->svc, &sw);
	track = flow_track(pkt, cfg, now);
	/* A SYN that gets no entry (a flood) while a change drains: its next segments will be
	 * misses, re-pinned by the previous share, so it goes where they will.
	 */
	if (track == FLOW_UNTRACKED && first && pkt->key.proto == IPPROTO_TCP && flow_draining(&sw))
		share = sw.prev_share;
	/* The flow's hash places it in its color's table; the split between colors goes by it
	 * too, or by the client's address alone (--split-by client).
	 */
	h = flow_hash(&pkt->key);
	hs = (vip->flags & BGS_VIP_SPLIT_CLIENT) ? flow_client_hash(&pkt->key) : h;
	return flow_create(ctx, pkt, &key, bgs_share_color(hs, share), h, &sw, track, now, dest);
}

/* The flow a packet from a backend (the tuple's source) to a client belongs to, with its key:
 * looked up under each service the backend's address and port serve, and only a flow whose
 * backend is that very address and port; one that is not closed comes before a closed one (a
 * client port reused through another service). NULL when there is none.
 */
static __always_inline struct bgs_flow *flow_of_reply(const struct bgs_flow_key *t,
						      const struct bgs_backend_ref *ref,
						      struct bgs_conn_key *key)
{
	struct bgs_flow *f, *closed = NULL;
	const struct bgs_backend *be;
	__u16 closed_svc = 0;
	__u32 i;

	flow_key(key, t, false, 0);
#pragma unroll
	for (i = 0; i < BGS_ADDR_SVCS; i++) {
		if (i >= ref->nsvc)
			break;
		key->svc = ref->svc[i];
		f = bpf_map_lookup_elem(&bgs_flows, key);
		if (!f)
			continue;
		be = flow_backend(f->slot);
		if (!be || be->port != t->sport || !addr_eq(be->addr, t->saddr))
			continue;
		if (!flow_is_closed(f, t->proto))
			return f;
		if (!closed) {
			closed = f;
			closed_svc = key->svc;
		}
	}
	key->svc = closed_svc;
	return closed;
}

#endif /* BGS_FLOW_BPF_H */
