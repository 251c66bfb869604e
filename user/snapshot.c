// SPDX-License-Identifier: GPL-2.0
/* snapshot.c: one consistent read of services, backends, live flows and counters, for the views. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>

#include "log.h"
#include "snapshot.h"
#include "util.h"

/* The names of include/bgswitch.h's lists, indexed by enum bgs_stat and enum bgs_drop_reason. */
#define STAT_NAME(id, name, passed, help) [BGS_STAT_##id] = #name,
const char *const bgs_stat_names[BGS_STAT_MAX] = { BGS_STATS(STAT_NAME) };

#define STAT_PASSED(id, name, passed, help) [BGS_STAT_##id] = passed,
const bool bgs_stat_passed[BGS_STAT_MAX] = { BGS_STATS(STAT_PASSED) };

#define DROP_NAME(id, name, help) [BGS_DROP_##id] = #name,
const char *const bgs_drop_names[BGS_DROP_MAX] = { BGS_DROP_REASONS(DROP_NAME) };

#define FIELDS(t) (sizeof(t) / sizeof(__u64))

const char *backend_state_name(__u8 state)
{
	return state == BGS_BACKEND_ACTIVE   ? "active" :
	       state == BGS_BACKEND_DRAINING ? "draining" :
					       "free";
}

static int color_add(struct bgs_color_view *cv, const struct bgs_state *st,
		     const struct bgs_flow_census *census, __u32 slot, const struct bgs_backend *be)
{
	struct bgs_backend_view *bv, *nb;
	__u64 *tot, *add;
	size_t i;

	nb = realloc(cv->backends, (cv->nbackends + 1) * sizeof(*nb));
	if (!nb)
		return -ENOMEM;
	cv->backends = nb;
	bv = &nb[cv->nbackends++];
	memset(bv, 0, sizeof(*bv));
	bv->slot = slot;
	bv->be = *be;
	bv->live = census->live[slot];
	bv->local = census->local[slot];
	bv->local_opened = census->local_opened[slot];
	percpu_sum(st, BGS_M_BACKEND_STATS, slot, (__u64 *)&bv->st, FIELDS(bv->st));
	cv->live += bv->live;
	cv->local += bv->local;
	tot = (__u64 *)&cv->tot;
	add = (__u64 *)&bv->st;
	for (i = 0; i < FIELDS(bv->st); i++)
		tot[i] += add[i];
	return 0;
}

static int service_view(const struct bgs_state *st, const struct bgs_flow_census *census,
			const struct bgs_backend *slots, struct bgs_service_view *sv)
{
	__u32 i, slot, *table, m;
	struct bgs_set set;
	size_t j;
	__u8 c;
	int err;

	sv->sw = switch_read(st, sv->svc);
	percpu_sum(st, BGS_M_SERVICE_STATS, sv->svc, (__u64 *)&sv->st, FIELDS(sv->st));
	for (c = 0; c < BGS_NCOLORS; c++) {
		if (set_read(st, sv->svc, c, &set))
			set.count = 0;
		for (i = 0; i < set.count; i++) {
			slot = set.slot[i];
			if (slot >= BGS_MAX_SLOTS || slots[slot].state == BGS_BACKEND_FREE)
				continue;
			err = color_add(&sv->color[c], st, census, slot, &slots[slot]);
			if (err)
				return err;
		}
		for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
			const struct bgs_backend *be = &slots[slot];

			if (be->state != BGS_BACKEND_DRAINING || be->svc != sv->svc ||
			    be->color != c)
				continue;
			err = color_add(&sv->color[c], st, census, slot, be);
			if (err)
				return err;
		}
		err = table_read(st, sv->svc, c, &table, &m);
		if (err)
			return err;
		sv->color[c].table_size = m;
		for (i = 0; i < m; i++)
			for (j = 0; j < sv->color[c].nbackends; j++)
				if (sv->color[c].backends[j].slot == table[i]) {
					sv->color[c].backends[j].positions++;
					break;
				}
		free(table);
	}
	return 0;
}

/* Read everything the views show. With only, just that service (-ENOENT if it is unknown). */
int snapshot_take(const struct bgs_state *st, const char *only, struct bgs_snapshot *snap)
{
	struct bgs_flow_census *census = NULL;
	struct bgs_backend *slots = NULL;
	struct bgs_service rec;
	__u32 svc, slot, i;
	__u64 inserts;
	int err;

	memset(snap, 0, sizeof(*snap));
	census = malloc(sizeof(*census));
	slots = calloc(BGS_MAX_SLOTS, sizeof(*slots));
	if (!census || !slots) {
		err = -ENOMEM;
		goto out;
	}
	err = flows_census(st, census);
	if (err)
		goto out;
	snap->taken_ns = now_ns();
	snap->flow_entries = census->entries;
	snap->live_total = census->live_total;
	snap->local_total = census->local_total;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++)
		bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &slots[slot]);
	for (i = 0; i < BGS_STAT_MAX; i++)
		percpu_sum(st, BGS_M_STATS, i, &snap->stats[i], 1);
	for (i = 0; i < BGS_DROP_MAX; i++)
		percpu_sum(st, BGS_M_DROPS, i, &snap->drops[i], 1);
	/* Every insert of a new key is a FLOW_NEW that is not a REOPEN (which overwrites). */
	inserts = snap->stats[BGS_STAT_FLOW_NEW] - snap->stats[BGS_STAT_FLOW_REOPEN];
	if (inserts > snap->flow_entries + st->cfg.collected)
		snap->evicted = inserts - snap->flow_entries - st->cfg.collected;

	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		struct bgs_service_view *nsv;

		if (!service_get(st, svc, &rec) || (only && strncmp(rec.name, only, BGS_NAME_LEN)))
			continue;
		nsv = realloc(snap->svcs, (snap->nsvcs + 1) * sizeof(*nsv));
		if (!nsv) {
			err = -ENOMEM;
			goto out;
		}
		snap->svcs = nsv;
		nsv = &snap->svcs[snap->nsvcs++];
		memset(nsv, 0, sizeof(*nsv));
		nsv->svc = svc;
		nsv->rec = rec;
		err = service_view(st, census, slots, nsv);
		if (err)
			goto out;
	}
	if (only && !snap->nsvcs) {
		pr_warn("unknown service '%s'\n", only);
		err = -ENOENT;
	}
out:
	free(census);
	free(slots);
	if (err)
		snapshot_free(snap);
	return err;
}

void snapshot_free(struct bgs_snapshot *snap)
{
	size_t i;
	int c;

	for (i = 0; i < snap->nsvcs; i++)
		for (c = 0; c < BGS_NCOLORS; c++)
			free(snap->svcs[i].color[c].backends);
	free(snap->svcs);
	memset(snap, 0, sizeof(*snap));
}

/* The same backend in an earlier snapshot, for rates; NULL if it was not there. */
const struct bgs_backend_view *snapshot_backend(const struct bgs_snapshot *snap, __u32 svc,
						__u32 slot)
{
	size_t i, j;
	int c;

	for (i = 0; i < snap->nsvcs; i++) {
		if (snap->svcs[i].svc != svc)
			continue;
		for (c = 0; c < BGS_NCOLORS; c++)
			for (j = 0; j < snap->svcs[i].color[c].nbackends; j++)
				if (snap->svcs[i].color[c].backends[j].slot == slot)
					return &snap->svcs[i].color[c].backends[j];
	}
	return NULL;
}
