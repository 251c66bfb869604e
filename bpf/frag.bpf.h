/* SPDX-License-Identifier: GPL-2.0 */
/* frag.bpf.h: later fragments follow (or pass with) their first fragment, which alone has ports. */
#ifndef BGS_FRAG_BPF_H
#define BGS_FRAG_BPF_H

#include "common.bpf.h"
#include "maps.bpf.h"
#include "parse.bpf.h"

static __always_inline void frag_key(const struct bgs_pkt *pkt, struct bgs_frag_key *k)
{
	__builtin_memcpy(k->saddr, pkt->key.saddr, sizeof(k->saddr));
	__builtin_memcpy(k->daddr, pkt->key.daddr, sizeof(k->daddr));
	k->id = pkt->frag_id;
	k->proto = pkt->key.proto;
	k->family = pkt->key.family;
	k->pad = 0;
}

/* Remember where the first fragment of a datagram went, for the fragments that follow. */
static __always_inline void frag_track(const struct bgs_pkt *pkt, const __u32 *addr, __u32 slot)
{
	struct bgs_frag_key k;
	struct bgs_frag v;

	if (pkt->frag != BGS_FRAG_FIRST)
		return;
	frag_key(pkt, &k);
	__builtin_memcpy(v.addr, addr, sizeof(v.addr));
	v.slot = slot;
	bpf_map_update_elem(&bgs_frags, &k, &v, BPF_ANY);
	stat_inc(BGS_STAT_FRAG_FIRST);
}

static __always_inline struct bgs_frag *frag_lookup(const struct bgs_pkt *pkt)
{
	struct bgs_frag_key k;

	frag_key(pkt, &k);
	return bpf_map_lookup_elem(&bgs_frags, &k);
}

/* Is this destination address one a service listens on (whatever the port)? */
static __always_inline bool frag_to_vip(const struct bgs_pkt *pkt)
{
	struct bgs_vip_addr va = {
		.addr = { pkt->key.daddr[0], pkt->key.daddr[1], pkt->key.daddr[2],
			  pkt->key.daddr[3] },
		.family = pkt->key.family,
	};

	return bpf_map_lookup_elem(&bgs_vip_addrs, &va);
}

/* A first fragment to a VIP address that no service steers leaves a pass marker, so that the
 * fragments that follow it pass untouched instead of being dropped as frag_miss.
 */
static __always_inline void frag_pass(const struct bgs_pkt *pkt)
{
	struct bgs_frag v = { .slot = BGS_FRAG_PASS };
	struct bgs_frag_key k;

	if (pkt->frag != BGS_FRAG_FIRST || !frag_to_vip(pkt))
		return;
	frag_key(pkt, &k);
	bpf_map_update_elem(&bgs_frags, &k, &v, BPF_ANY);
}

static __always_inline bool frag_is_pass(const struct bgs_frag *fr)
{
	return fr->slot == BGS_FRAG_PASS;
}

#endif /* BGS_FRAG_BPF_H */
