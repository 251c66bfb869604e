/* SPDX-License-Identifier: GPL-2.0 */
/* flow.bpf.h: service lookup, the flow table, and the choice of a backend for a new flow. */
#ifndef BGS_FLOW_BPF_H
#define BGS_FLOW_BPF_H

#include "common.bpf.h"
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

/* Hash of the client-to-VIP 5-tuple (murmur3-style); tests/model.py mirrors it. */
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

/* The service a packet is addressed to, or NULL when it is not ours. */
static __always_inline struct bgs_vip *flow_service(const struct bgs_pkt *pkt)
{
	struct bgs_vip_key vk = {
		.addr = { pkt->key.daddr[0], pkt->key.daddr[1], pkt->key.daddr[2],
			  pkt->key.daddr[3] },
		.port = pkt->key.dport,
		.proto = pkt->key.proto,
		.family = pkt->key.family,
	};

	return bpf_map_lookup_elem(&bgs_vips, &vk);
}

static __always_inline bool flow_is_syn(const struct bgs_pkt *pkt)
{
	return (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* A flow that a new first packet may replace: closed, or idle past its protocol's timeout. */
static __always_inline bool flow_is_dead(const struct bgs_flow *f, __u8 proto, __u64 now)
{
	__u32 zero = 0;
	struct bgs_config *cfg;
	__u64 idle;

	if (proto == IPPROTO_TCP &&
	    ((f->state & BGS_FLOW_RST) || (f->state & BGS_FLOW_BOTH_FIN) == BGS_FLOW_BOTH_FIN))
		return true;
	cfg = bpf_map_lookup_elem(&bgs_config, &zero);
	if (!cfg)
		return false;
	idle = proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns;
	return now - f->last_seen > idle;
}

/* Record a client packet on an existing flow: time, and FIN or RST. */
static __always_inline void flow_touch(const struct bgs_pkt *pkt, struct bgs_flow *f, __u64 now)
{
	if (now - f->last_seen > BGS_TOUCH_NS)
		f->last_seen = now;
	if (pkt->key.proto != IPPROTO_TCP)
		return;
	if ((pkt->tcp_flags & TCP_FLAG_RST) && !(f->state & BGS_FLOW_RST))
		__sync_fetch_and_or(&f->state, BGS_FLOW_RST);
	if ((pkt->tcp_flags & TCP_FLAG_FIN) && !(f->state & BGS_FLOW_FIN_CLIENT))
		__sync_fetch_and_or(&f->state, BGS_FLOW_FIN_CLIENT);
}

/* May this CPU insert one more flow now? A token bucket refilled at cfg->new_flow_rate per
 * second, in millionths of an insert so that slow rates still refill.
 */
static __always_inline bool flow_insert_allowed(__u64 now)
{
	struct bgs_config *cfg;
	struct bgs_bucket *b;
	__u32 zero = 0;
	__u64 cap;

	cfg = bpf_map_lookup_elem(&bgs_config, &zero);
	if (!cfg || !cfg->new_flow_rate)
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

/* Pick a backend of `color` for a new flow whose hash is h, and record the flow both ways.
 * Returns BGS_CONTINUE with *out filled, or XDP_DROP with the reason counted.
 */
static __always_inline int flow_create(const struct bgs_pkt *pkt, __u32 svc, __u8 color, __u32 h,
				       const struct bgs_switch *sw, __u64 now, struct bgs_flow *out)
{
	struct bgs_backend_stats *bs;
	struct bgs_flow_key rkey = {};
	struct bgs_reverse rev = {};
	struct bgs_backend *be;
	__u32 slot = 0, why = 0;

	if (!flow_insert_allowed(now))
		return stat_drop(svc, BGS_DROP_INSERT_LIMIT);
	if (!flow_pick(bgs_set_index(svc, color, sw->set_sel >> (color & 1)), h, &slot, &why))
		return stat_drop(svc, why);
	be = bpf_map_lookup_elem(&bgs_backends, &slot);
	if (!be || be->state != BGS_BACKEND_ACTIVE)
		return stat_drop(svc, BGS_DROP_BAD_BACKEND);

	__builtin_memcpy(out->daddr, be->addr, sizeof(out->daddr));
	out->dport = be->port;
	out->color = color;
	out->pad = 0;
	out->pad2 = 0;
	out->slot = slot;
	out->state = pkt->key.proto == IPPROTO_TCP && flow_is_syn(pkt) ? BGS_FLOW_SYN : 0;
	out->last_seen = now;

	__builtin_memcpy(rkey.saddr, be->addr, sizeof(rkey.saddr));
	__builtin_memcpy(rkey.daddr, pkt->key.saddr, sizeof(rkey.daddr));
	rkey.sport = be->port;
	rkey.dport = pkt->key.sport;
	rkey.proto = pkt->key.proto;
	rkey.family = pkt->key.family;
	__builtin_memcpy(rev.vaddr, pkt->key.daddr, sizeof(rev.vaddr));
	rev.vport = pkt->key.dport;
	rev.slot = slot;

	/* Reverse first: a forward entry must never exist without its way back. */
	if (bpf_map_update_elem(&bgs_reverse, &rkey, &rev, BPF_ANY) ||
	    bpf_map_update_elem(&bgs_flows, &pkt->key, out, BPF_ANY))
		return stat_drop(svc, BGS_DROP_FLOW_INSERT);

	stat_inc(BGS_STAT_FLOW_NEW);
	bs = stat_backend(slot);
	if (bs)
		bs->new_flows++;
	return BGS_CONTINUE;
}

/* Find the flow of a client packet, or start one. Returns BGS_CONTINUE with *out set to where
 * the packet goes, or a verdict. A TCP segment without SYN that misses is re-pinned to the
 * color its connection can be on, never simply to whichever color is active now.
 */
static __always_inline int flow_steer(const struct bgs_pkt *pkt, const struct bgs_vip *vip,
				      struct bgs_flow *out)
{
	__u64 now = bpf_ktime_get_coarse_ns();
	bool tcp = pkt->key.proto == IPPROTO_TCP;
	bool first = tcp ? flow_is_syn(pkt) : true;
	struct bgs_service_stats *ss;
	__u32 svc = vip->svc, h, hs, share;
	struct bgs_switch sw;
	struct bgs_flow *f;

	f = bpf_map_lookup_elem(&bgs_flows, &pkt->key);
	if (f && !(first && flow_is_dead(f, pkt->key.proto, now))) {
		stat_inc(BGS_STAT_FLOW_HIT);
		flow_touch(pkt, f, now);
		__builtin_memcpy(out, f, sizeof(*out));
		return BGS_CONTINUE;
	}
	ss = stat_service(svc);
	if (flow_switch(svc, &sw))
		return stat_drop(svc, BGS_DROP_NO_BACKEND);
	share = sw.share;
	if (!first) {
		stat_inc(BGS_STAT_NOSYN_MISS);
		if (ss)
			ss->nosyn_miss++;
		/* Its entry is gone (evicted, or collected after a long idle). Re-pin it to the
		 * color it can belong to: while the last change drains, a second chance toward
		 * where the share before it put this flow (GLB, Beamer), since that is where
		 * connections older than the change live; once drained, where the share puts it.
		 */
		stat_inc(BGS_STAT_SECOND_CHANCE);
		if (ss)
			ss->second_chance++;
		if ((sw.flags & (BGS_SW_DRAINING | BGS_SW_HAS_PREV)) ==
		    (BGS_SW_DRAINING | BGS_SW_HAS_PREV))
			share = sw.prev_share;
	} else if (f) {
		stat_inc(BGS_STAT_FLOW_REOPEN);
		if (ss)
			ss->reopen++;
	} else if (tcp) {
		stat_inc(BGS_STAT_SYN_MISS);
		if (ss)
			ss->syn_miss++;
	}
	/* The flow's hash places it in its color's table; the split between colors goes by it
	 * too, or by the client's address alone (--split-by client).
	 */
	h = flow_hash(&pkt->key);
	hs = (vip->flags & BGS_VIP_SPLIT_CLIENT) ? flow_client_hash(&pkt->key) : h;
	return flow_create(pkt, svc, bgs_share_color(hs, share), h, &sw, now, out);
}

/* Mark the backend's FIN or RST on the flow the reply belongs to. */
static __always_inline void flow_mark_server(const struct bgs_pkt *pkt,
					     const struct bgs_reverse *rev)
{
	struct bgs_flow_key k = {};
	struct bgs_flow *f;

	__builtin_memcpy(k.saddr, pkt->key.daddr, sizeof(k.saddr));
	__builtin_memcpy(k.daddr, rev->vaddr, sizeof(k.daddr));
	k.sport = pkt->key.dport;
	k.dport = rev->vport;
	k.proto = pkt->key.proto;
	k.family = pkt->key.family;
	f = bpf_map_lookup_elem(&bgs_flows, &k);
	/* A late FIN or RST from the backend of an earlier flow on this 5-tuple is not ours. */
	if (!f || f->slot != rev->slot)
		return;
	if (pkt->tcp_flags & TCP_FLAG_RST)
		__sync_fetch_and_or(&f->state, BGS_FLOW_RST);
	if (pkt->tcp_flags & TCP_FLAG_FIN)
		__sync_fetch_and_or(&f->state, BGS_FLOW_FIN_SERVER);
}

#endif /* BGS_FLOW_BPF_H */
