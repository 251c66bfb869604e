// SPDX-License-Identifier: GPL-2.0
/* repair.c: garbage collection and repair of the pinned state: releasing backend slots, blanking
 * what a command killed half way left, recounting the address maps and the VIP filter, and
 * ending the second chance of services that drained.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>

#include "log.h"
#include "state.h"
#include "util.h"

/* Free a slot that no set names any more: forget its flows, its address, its counters. The
 * record keeps whose it was (service, color, address) with state FREE, which nothing serves:
 * a re-run of a `backend del` killed after this finds it and says it is done.
 */
int slot_release(struct bgs_state *st, __u32 slot)
{
	struct bgs_backend be;
	__u64 deleted;
	int err;

	if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be))
		return -errno;
	if (be.state == BGS_BACKEND_FREE)
		return 0;
	err = flows_delete_slot(st, slot, true, &deleted);
	if (err)
		return err;

	err = percpu_zero(st, BGS_M_BACKEND_STATS, slot, sizeof(struct bgs_backend_stats));
	if (err)
		return err;
	/* Local sockets still counted on it (cut by --force) stop counting: their release finds
	 * the slot free, or another backend in it, and leaves the new count alone.
	 */
	if (bpf_map_update_elem(st->fd[BGS_M_LOCAL_COUNTS], &slot, &(struct bgs_local_count){ 0 },
				BPF_ANY))
		return -errno;

	be.state = BGS_BACKEND_FREE;
	be.weight = 0;
	if (bpf_map_update_elem(st->fd[BGS_M_BACKENDS], &slot, &be, BPF_ANY))
		return -errno;
	err = addrs_resync(st);
	if (err)
		return err;
	pr_debug("released backend slot %u\n", slot);
	return 0;
}

/* Blank the free slots that still name svc: a new service of that id has no removed backends. */
int slots_forget(const struct bgs_state *st, __u32 svc)
{
	struct bgs_backend be, zero = { 0 };
	__u32 slot;

	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be))
			return -errno;
		if (be.state != BGS_BACKEND_FREE || be.svc != svc ||
		    !memcmp(&be, &zero, sizeof(be)))
			continue;
		if (bpf_map_update_elem(st->fd[BGS_M_BACKENDS], &slot, &zero, BPF_ANY))
			return -errno;
	}
	return 0;
}

/* Where each slot is named: (svc << 1 | color) + 1 of the current set of a visible service that
 * holds it, 0 for none.
 */
static int slots_in_sets(const struct bgs_state *st, const bool *visible, __u32 *set_of)
{
	struct bgs_set *set = malloc(sizeof(*set));
	__u32 svc, i;
	__u8 c;
	int err = 0;

	if (!set)
		return -ENOMEM;
	memset(set_of, 0, BGS_MAX_SLOTS * sizeof(*set_of));
	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		if (!visible[svc])
			continue;
		for (c = 0; c < BGS_NCOLORS; c++) {
			err = set_read(st, svc, c, set);
			if (err)
				goto out;
			for (i = 0; i < set->count; i++)
				if (set->slot[i] < BGS_MAX_SLOTS)
					set_of[set->slot[i]] = (svc << 1 | c) + 1;
		}
	}
out:
	free(set);
	return err;
}

/* Release every slot nothing needs any more: a draining slot no live flow points at, and the
 * orphans a command killed half way leaves behind. An active slot that is in no current set of
 * its service (a `backend add` killed before its set was committed, a `backend del` killed
 * after) is treated as draining: kept, marked draining, while live flows point at it, released
 * otherwise. A slot of a service that is gone, or was never finished, is released.
 */
int slots_collect(struct bgs_state *st)
{
	struct bgs_flow_census *c = NULL;
	struct bgs_backend *be = NULL;
	__u32 *set_of = NULL, slot;
	bool *visible = NULL, any = false;
	struct bgs_service rec;
	int err = 0;

	be = calloc(BGS_MAX_SLOTS, sizeof(*be));
	set_of = calloc(BGS_MAX_SLOTS, sizeof(*set_of));
	visible = calloc(BGS_MAX_SERVICES, sizeof(*visible));
	if (!be || !set_of || !visible) {
		err = -ENOMEM;
		goto out;
	}
	for (slot = 0; slot < BGS_MAX_SERVICES; slot++)
		visible[slot] = service_get(st, slot, &rec);
	err = slots_in_sets(st, visible, set_of);
	if (err)
		goto out;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be[slot]))
			be[slot].state = BGS_BACKEND_FREE;
		if (be[slot].state == BGS_BACKEND_FREE)
			continue;
		/* In its own service's current set: in use. Anything else is a candidate. */
		if (be[slot].svc < BGS_MAX_SERVICES && visible[be[slot].svc] &&
		    set_of[slot] == (be[slot].svc << 1 | be[slot].color) + 1)
			be[slot].state = BGS_BACKEND_FREE;
		else
			any = true;
	}
	if (!any)
		goto out;
	c = malloc(sizeof(*c));
	if (!c) {
		err = -ENOMEM;
		goto out;
	}
	err = flows_census(st, c);
	if (err)
		goto out;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		struct bgs_backend *b = &be[slot];
		bool gone = b->svc >= BGS_MAX_SERVICES || !visible[b->svc];

		if (b->state == BGS_BACKEND_FREE)
			continue;
		if (!gone && c->live[slot]) {
			if (b->state == BGS_BACKEND_ACTIVE) {
				pr_debug("slot %u is in no set but has live flows: draining\n",
					 slot);
				b->state = BGS_BACKEND_DRAINING;
				if (bpf_map_update_elem(st->fd[BGS_M_BACKENDS], &slot, b,
							BPF_ANY)) {
					err = -errno;
					goto out;
				}
			}
			continue;
		}
		if (b->state == BGS_BACKEND_ACTIVE || gone)
			pr_debug("collecting orphan slot %u\n", slot);
		err = slot_release(st, slot);
		if (err)
			goto out;
	}
out:
	free(c);
	free(be);
	free(set_of);
	free(visible);
	return err;
}

/* A service record left invisible by a command killed half way (added without its VIP entry,
 * or with its VIP entry deleted) is garbage: blank it. So is a VIP entry that names a service
 * that is not there.
 */
static int services_collect(struct bgs_state *st)
{
	struct bgs_service rec, blank = { 0 }, other;
	struct bgs_switch zero_sw = { 0 };
	struct bgs_vip_key key, next;
	struct bgs_vip vip;
	__u32 svc;
	int err;

	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		if (bpf_map_lookup_elem(st->fd[BGS_M_SERVICES], &svc, &rec) || !rec.name[0] ||
		    service_get(st, svc, &other))
			continue;
		pr_debug("collecting the unfinished service record %u (%.*s)\n", svc, BGS_NAME_LEN,
			 rec.name);
		switch_write(st, svc, zero_sw);
		err = tables_clear(st, svc);
		if (err)
			return err;
		if (bpf_map_update_elem(st->fd[BGS_M_SERVICES], &svc, &blank, BPF_ANY))
			return -errno;
	}
	for (err = bpf_map_get_next_key(st->fd[BGS_M_VIPS], NULL, &key); !err; key = next) {
		err = bpf_map_get_next_key(st->fd[BGS_M_VIPS], &key, &next);
		if (bpf_map_lookup_elem(st->fd[BGS_M_VIPS], &key, &vip))
			continue;
		if (service_get(st, vip.svc, &rec) && !memcmp(&rec.vip, &key, sizeof(key)))
			continue;
		pr_debug("deleting a VIP entry of no service\n");
		bpf_map_delete_elem(st->fd[BGS_M_VIPS], &key);
	}
	return 0;
}

struct addr_count {
	__u8 key[sizeof(struct bgs_backend_addr)];
	__u32 count;
	struct bgs_backend_ref ref; /* bgs_backend_addrs: the services of the address */
};

/* Add the services of b to a's, once each (`backend add` keeps them to BGS_ADDR_SVCS). */
static void addr_merge(struct addr_count *a, const struct addr_count *b)
{
	__u32 i, j;

	a->count += b->count;
	for (i = 0; i < b->ref.nsvc; i++) {
		for (j = 0; j < a->ref.nsvc && a->ref.svc[j] != b->ref.svc[i]; j++)
			;
		if (j == a->ref.nsvc && j < BGS_ADDR_SVCS)
			a->ref.svc[a->ref.nsvc++] = b->ref.svc[i];
	}
}

static int addr_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(((struct addr_count *)0)->key));
}

/* Make a reference-counted address map hold exactly want[0..n) (keys of key_size bytes). */
static int addrs_sync(struct bgs_state *st, enum bgs_map_id m, struct addr_count *want, size_t n,
		      size_t key_size)
{
	struct addr_count probe, *hit;
	__u8 key[sizeof(probe.key)], next[sizeof(probe.key)];
	size_t i, k = 0;
	int err;

	/* Sort, then merge equal keys into one with their counts added. */
	qsort(want, n, sizeof(*want), addr_cmp);
	for (i = 0; i < n; i++) {
		if (k && !memcmp(want[k - 1].key, want[i].key, sizeof(want[i].key))) {
			addr_merge(&want[k - 1], &want[i]);
		} else {
			want[k++] = want[i];
		}
	}
	n = k;
	memset(&probe, 0, sizeof(probe));
	for (err = bpf_map_get_next_key(st->fd[m], NULL, key); !err; memcpy(key, next, key_size)) {
		err = bpf_map_get_next_key(st->fd[m], key, next);
		memcpy(probe.key, key, key_size);
		hit = bsearch(&probe, want, n, sizeof(*want), addr_cmp);
		if (!hit) {
			pr_debug("deleting a stale entry of %s\n", bgs_map_names[m]);
			bpf_map_delete_elem(st->fd[m], key);
		}
	}
	for (i = 0; i < n; i++) {
		/* bgs_vip_addrs holds a count; bgs_backend_addrs a count and its services. */
		struct bgs_backend_ref have, ref = want[i].ref;
		size_t vsize = m == BGS_M_BACKEND_ADDRS ? sizeof(ref) : sizeof(ref.refs);

		ref.refs = want[i].count;
		memset(&have, 0, sizeof(have));
		if (!bpf_map_lookup_elem(st->fd[m], want[i].key, &have) &&
		    !memcmp(&have, &ref, vsize))
			continue;
		if (bpf_map_update_elem(st->fd[m], want[i].key, &ref, BPF_ANY))
			return -errno;
	}
	return 0;
}

/* Set bgs_vip_filter to exactly the bits of the services' addresses: a bit is set before a
 * packet can need it (a service's VIP entry is written after this runs for it), and cleared
 * only once no service has it.
 */
static int vip_filter_sync(struct bgs_state *st)
{
	__u64 want[BGS_VIP_FILTER_WORDS] = { 0 }, have;
	struct bgs_service rec;
	__u32 i, bit;

	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		if (!service_get(st, i, &rec))
			continue;
		bit = bgs_vip_filter_bit(rec.vip.addr);
		want[bit >> 6] |= 1ULL << (bit & 63);
	}
	for (i = 0; i < BGS_VIP_FILTER_WORDS; i++) {
		if (!bpf_map_lookup_elem(st->fd[BGS_M_VIP_FILTER], &i, &have) && have == want[i])
			continue;
		if (bpf_map_update_elem(st->fd[BGS_M_VIP_FILTER], &i, &want[i], BPF_ANY))
			return -errno;
	}
	return 0;
}

/* Recount bgs_vip_addrs from the services and bgs_backend_addrs from the slots in use, so that
 * a command killed between a reference count and the entry it counts leaves nothing stale; and
 * set the VIP filter from the services.
 */
int addrs_resync(struct bgs_state *st)
{
	struct addr_count *want = calloc(BGS_MAX_SLOTS, sizeof(*want));
	struct bgs_service rec;
	struct bgs_backend be;
	__u32 i;
	size_t n = 0;
	int err;

	if (!want)
		return -ENOMEM;
	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		struct bgs_vip_addr va = { 0 };

		if (!service_get(st, i, &rec))
			continue;
		memcpy(va.addr, rec.vip.addr, sizeof(va.addr));
		va.family = rec.vip.family;
		memset(&want[n], 0, sizeof(want[n]));
		memcpy(want[n].key, &va, sizeof(va));
		want[n++].count = 1;
	}
	err = addrs_sync(st, BGS_M_VIP_ADDRS, want, n, sizeof(struct bgs_vip_addr));
	if (!err)
		err = vip_filter_sync(st);
	if (err)
		goto out;
	n = 0;
	for (i = 0; i < BGS_MAX_SLOTS; i++) {
		struct bgs_backend_addr ba = { 0 };

		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &i, &be) ||
		    be.state == BGS_BACKEND_FREE)
			continue;
		memcpy(ba.addr, be.addr, sizeof(ba.addr));
		ba.port = be.port;
		ba.proto = be.proto;
		ba.family = be.family;
		memset(&want[n], 0, sizeof(want[n]));
		memcpy(want[n].key, &ba, sizeof(ba));
		want[n].ref.svc[0] = be.svc;
		want[n].ref.nsvc = 1;
		want[n++].count = 1;
	}
	err = addrs_sync(st, BGS_M_BACKEND_ADDRS, want, n, sizeof(struct bgs_backend_addr));
out:
	free(want);
	return err;
}

/* Bring the state back to consistency after a command was killed between two of its map
 * writes: unfinished service records, orphan slots, stale reference counts. Every command that
 * changes services or backends runs it first, under the lock; so do gc and the exporter.
 */
int state_repair(struct bgs_state *st)
{
	int err;

	err = slots_collect(st);
	if (!err)
		err = services_collect(st);
	if (!err)
		err = addrs_resync(st);
	return err;
}

/* End the second chance of every service sent wholly to one color whose other color has no live
 * flow left: from then on a non-SYN miss is re-pinned to where the share puts it. A service
 * split between colors keeps it (both colors take flows). Not a change to the service: the
 * generation stays.
 */
int drain_settle(struct bgs_state *st)
{
	struct bgs_flow_census *c = NULL;
	struct bgs_backend be;
	__u64 live[BGS_MAX_SERVICES] = { 0 };
	bool any = false;
	__u32 svc, slot;
	int err;

	for (svc = 0; svc < BGS_MAX_SERVICES && !any; svc++)
		any = switch_read(st, svc).flags & BGS_SW_DRAINING;
	if (!any)
		return 0;
	c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	err = flows_census(st, c);
	if (err)
		goto out;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		struct bgs_switch sw;

		if (!c->live[slot] || bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be) ||
		    be.state == BGS_BACKEND_FREE || be.svc >= BGS_MAX_SERVICES)
			continue;
		sw = switch_read(st, be.svc);
		if (be.color != share_color(sw.share))
			live[be.svc] += c->live[slot];
	}
	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		struct bgs_switch sw = switch_read(st, svc);

		if (!(sw.flags & BGS_SW_DRAINING) || live[svc] ||
		    share_color(sw.share) == BGS_COLOR_NONE)
			continue;
		sw.flags &= ~BGS_SW_DRAINING;
		switch_write(st, svc, sw);
		pr_debug("service %u: the other color drained, second chance off\n", svc);
	}
out:
	free(c);
	return err;
}
