// SPDX-License-Identifier: GPL-2.0
/* ops_service.c: the operations on services and backends (ops.h): their checks, map writes and
 * audit records, for the commands and the fleet agent alike.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>

#include "log.h"
#include "ops.h"

/* ---- typed access to the maps of services and backends: the only map calls of this file ---- */

static bool backend_get(const struct bgs_state *st, __u32 slot, struct bgs_backend *be)
{
	return !bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, be);
}

static int backend_put(struct bgs_state *st, __u32 slot, const struct bgs_backend *be)
{
	return bpf_map_update_elem(st->fd[BGS_M_BACKENDS], &slot, be, BPF_ANY) ? -errno : 0;
}

static int vip_put(struct bgs_state *st, const struct bgs_vip_key *key, const struct bgs_vip *vip,
		   __u64 flags)
{
	return bpf_map_update_elem(st->fd[BGS_M_VIPS], key, vip, flags) ? -errno : 0;
}

static int vip_del(struct bgs_state *st, const struct bgs_vip_key *key)
{
	return bpf_map_delete_elem(st->fd[BGS_M_VIPS], key) ? -errno : 0;
}

static int service_put(struct bgs_state *st, __u32 svc, const struct bgs_service *rec)
{
	return bpf_map_update_elem(st->fd[BGS_M_SERVICES], &svc, rec, BPF_ANY) ? -errno : 0;
}

/* The service record in slot svc, visible (its VIP written) or not. */
static bool service_record_get(const struct bgs_state *st, __u32 svc, struct bgs_service *rec)
{
	return !bpf_map_lookup_elem(st->fd[BGS_M_SERVICES], &svc, rec) && rec->name[0];
}

/* Every backend set of service svc (both colors, both halves of each double buffer) empty. */
static int sets_clear(struct bgs_state *st, __u32 svc)
{
	struct bgs_set empty = { 0 };
	__u32 i, idx;

	for (i = 0; i < 4; i++) {
		idx = (svc << 2) | i;
		if (bpf_map_update_elem(st->fd[BGS_M_SETS], &idx, &empty, BPF_ANY))
			return -errno;
	}
	return 0;
}

/* The services a backend address and port serve (a reply finds its flow under each). */
static bool backend_ref_get(const struct bgs_state *st, const struct bgs_backend_addr *ba,
			    struct bgs_backend_ref *ref)
{
	return !bpf_map_lookup_elem(st->fd[BGS_M_BACKEND_ADDRS], ba, ref);
}

static bool slot_matches(const struct bgs_backend *be, __u32 svc, __u8 color,
			 const struct bgs_endpoint *ep)
{
	return be->svc == svc && be->color == color && be->port == ep->port &&
	       !memcmp(be->addr, ep->addr, sizeof(be->addr));
}

bool bgs_vip_owner(const struct bgs_state *st, const struct bgs_vip_key *key, __u32 *svc)
{
	struct bgs_vip vip;

	if (bpf_map_lookup_elem(st->fd[BGS_M_VIPS], key, &vip))
		return false;
	*svc = vip.svc;
	return true;
}

/* service_find() without its warning: the service of that name, visible (its VIP written). */
bool bgs_service_visible(const struct bgs_state *st, const char *name, __u32 *svc,
			 struct bgs_service *rec)
{
	__u32 i;

	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		if (service_get(st, i, rec) && !strncmp(rec->name, name, BGS_NAME_LEN)) {
			*svc = i;
			return true;
		}
	}
	return false;
}

/* A service of that name, visible or not: an invisible one is a `service add` or `service
 * del` that was killed half way.
 */
static bool service_record_named(const struct bgs_state *st, const char *name)
{
	struct bgs_service rec;
	__u32 i;

	for (i = 0; i < BGS_MAX_SERVICES; i++)
		if (service_record_get(st, i, &rec) && !strncmp(rec.name, name, BGS_NAME_LEN))
			return true;
	return false;
}

/* The backends of one color of a service: its current set (service, color, ep and weight). */
int bgs_backends_read(const struct bgs_state *st, __u32 svc, __u8 color,
		      struct bgs_backend_spec *out, __u32 *n)
{
	struct bgs_backend be;
	struct bgs_set set;
	__u32 i;
	int err;

	*n = 0;
	err = set_read(st, svc, color, &set);
	if (err)
		return err;
	for (i = 0; i < set.count && i < BGS_MAX_BACKENDS; i++) {
		if (!backend_get(st, set.slot[i], &be))
			continue;
		memset(&out[*n], 0, sizeof(out[*n]));
		out[*n].color = color;
		memcpy(out[*n].ep.addr, be.addr, sizeof(be.addr));
		out[*n].ep.port = be.port;
		out[*n].ep.family = be.family;
		out[*n].weight = be.weight;
		(*n)++;
	}
	return 0;
}

/* ---- one operation: its error as a value, its audit record ---- */

static int op_begin(struct bgs_op *op, struct bgs_audit *au, const char *action)
{
	op->done = BGS_DONE_NOTHING;
	op->did = 0;
	op->generation = 0;
	op->live = 0;
	op->count = 0;
	bgs_log_error_to(op->error, sizeof(op->error));
	return audit_open(au, action, op->reason);
}

static int op_end(struct bgs_op *op, struct bgs_audit *au, int err)
{
	audit_record(au, err);
	audit_close(au);
	bgs_log_error_to(NULL, 0);
	if (!err)
		op->error[0] = '\0';
	else if (!op->error[0])
		snprintf(op->error, sizeof(op->error), "%s", strerror(-err));
	return err;
}

/* ---- service add ---- */

/* A slot for a new service: its name and its VIP are not taken. */
static int service_slot(const struct bgs_state *st, const struct bgs_service *rec, __u32 *svc)
{
	char ebuf[BGS_ADDRSTR_LEN];
	struct bgs_service other;
	__u32 i, found = BGS_MAX_SERVICES, owner;

	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		if (!service_get(st, i, &other)) {
			if (found == BGS_MAX_SERVICES)
				found = i;
			continue;
		}
		if (!strncmp(other.name, rec->name, BGS_NAME_LEN)) {
			pr_warn("service '%s' already exists\n", rec->name);
			return -EEXIST;
		}
	}
	if (bgs_vip_owner(st, &rec->vip, &owner) && service_get(st, owner, &other)) {
		pr_warn("%s/%s already belongs to service '%s'\n",
			fmt_endpoint(rec->vip.addr, rec->vip.port, rec->vip.family, ebuf,
				     sizeof(ebuf)),
			proto_name(rec->vip.proto), other.name);
		return -EEXIST;
	}
	if (found == BGS_MAX_SERVICES) {
		pr_warn("no room for another service (the build allows %d)\n", BGS_MAX_SERVICES);
		return -ENOSPC;
	}
	*svc = found;
	return 0;
}

/* Everything the data plane will read first, the VIP entry that makes it visible last: killed
 * before that, the service is an invisible record that the next command collects.
 */
static int service_write(struct bgs_state *st, __u32 svc, const struct bgs_service *rec)
{
	struct bgs_switch sw = { .generation = 1, .share = 0 };
	struct bgs_vip vip = { .svc = svc, .flags = rec->vip_flags };
	struct bgs_vip_addr va = { .family = rec->vip.family };
	int err;

	err = slots_forget(st, svc);
	if (err)
		return err;
	err = sets_clear(st, svc);
	if (err)
		goto write_err;
	err = tables_clear(st, svc); /* an empty color needs none: it has no backend */
	if (err)
		return err;
	switch_write(st, svc, sw);
	err = percpu_zero(st, BGS_M_SERVICE_STATS, svc, sizeof(struct bgs_service_stats));
	if (err)
		return err;
	err = service_put(st, svc, rec);
	if (err)
		goto write_err;
	memcpy(va.addr, rec->vip.addr, sizeof(va.addr));
	err = refcount_add(st, BGS_M_VIP_ADDRS, &va, 1);
	if (!err)
		err = vip_filter_add(st, rec->vip.addr);
	if (err)
		return err;
	fault_point("service-add-before-vip");
	err = vip_put(st, &rec->vip, &vip, BPF_ANY);
	if (!err) {
		svc_index_set(st, rec->name, svc); /* the next command finds it without a scan */
		return 0;
	}
	refcount_add(st, BGS_M_VIP_ADDRS, &va, -1);
write_err:
	pr_warn("cannot write the service: %s\n", strerror(-err));
	return err;
}

int bgs_service_add(struct bgs_state *st, const struct bgs_service_spec *spec, struct bgs_op *op)
{
	struct bgs_service rec = { 0 };
	struct bgs_audit au = { .fd = -1 };
	char ebuf[BGS_ADDRSTR_LEN];
	__u32 svc;
	int err;

	err = op_begin(op, &au, "service-add");
	if (!err)
		err = state_repair(st);
	if (err)
		goto out;
	snprintf(rec.name, sizeof(rec.name), "%s", spec->name);
	memcpy(rec.vip.addr, spec->vip.addr, sizeof(spec->vip.addr));
	rec.vip.port = spec->vip.port;
	rec.vip.proto = spec->proto;
	rec.vip.family = spec->vip.family;
	rec.lb = spec->lb;
	rec.table_size = spec->lb == BGS_LB_MAGLEV ? spec->table_size : 0;
	rec.vip_flags = spec->vip_flags;
	snprintf(au.service, sizeof(au.service), "%s", rec.name);
	snprintf(au.to, sizeof(au.to), "%s/%s",
		 fmt_endpoint(spec->vip.addr, spec->vip.port, spec->vip.family, ebuf, sizeof(ebuf)),
		 proto_name(spec->proto));
	au.gen_after = 1;
	err = service_slot(st, &rec, &svc);
	if (!err)
		err = service_write(st, svc, &rec);
	if (!err) {
		op->done = BGS_DONE_ADDED;
		op->generation = 1;
	}
out:
	return op_end(op, &au, err);
}

/* ---- service set ---- */

static const char *split_name(__u32 vflags)
{
	return vflags & BGS_VIP_SPLIT_CLIENT ? "client" : "flow";
}

/* Change what a split goes by: the VIP entry (what the data plane reads) first, then the
 * record; a record that cannot be written puts the entry back.
 */
static int service_set_split(struct bgs_state *st, __u32 svc, struct bgs_service *rec, __u32 vflags,
			     struct bgs_op *op)
{
	struct bgs_vip vip = { .svc = svc, .flags = vflags };
	__u32 old = rec->vip_flags;
	int err;

	if (rec->vip_flags == vflags)
		return 0;
	err = vip_put(st, &rec->vip, &vip, BPF_EXIST);
	if (!err) {
		rec->vip_flags = vflags;
		err = service_put(st, svc, rec);
		if (err) {
			vip.flags = rec->vip_flags = old;
			vip_put(st, &rec->vip, &vip, BPF_EXIST);
		}
	}
	if (err) {
		pr_warn("cannot write the service: %s\n", strerror(-err));
		return err;
	}
	op->did |= BGS_DID_SPLIT;
	return 0;
}

/* Both colors' tables at the new size m, made current with one switch store. Everything is
 * checked before anything is written.
 */
static int service_set_table(struct bgs_state *st, __u32 svc, struct bgs_service *rec, __u32 m,
			     struct bgs_op *op)
{
	struct bgs_set sets[BGS_NCOLORS];
	__u32 most;
	int err;

	if (rec->lb != BGS_LB_MAGLEV) {
		pr_warn("'%s' has no table (--lb modulo)\n", rec->name);
		return -EINVAL;
	}
	err = set_read(st, svc, BGS_BLUE, &sets[BGS_BLUE]);
	if (!err)
		err = set_read(st, svc, BGS_GREEN, &sets[BGS_GREEN]);
	if (err)
		return err;
	most = sets[BGS_BLUE].count > sets[BGS_GREEN].count ? sets[BGS_BLUE].count :
							      sets[BGS_GREEN].count;
	if (most > m) {
		pr_warn("a table of %u positions cannot hold the %u backends of a color of '%s'\n",
			m, most, rec->name);
		return -EINVAL;
	}
	if (rec->table_size == m)
		return 0;
	rec->table_size = m;
	err = sets_commit(st, svc, rec, sets, (1 << BGS_BLUE) | (1 << BGS_GREEN));
	if (!err)
		err = service_put(st, svc, rec);
	if (err)
		return err;
	op->did |= BGS_DID_TABLE;
	op->generation = switch_read(st, svc).generation;
	return 0;
}

int bgs_service_set(struct bgs_state *st, const struct bgs_service_spec *spec, struct bgs_op *op)
{
	struct bgs_audit au = { .fd = -1 };
	struct bgs_service rec;
	__u32 svc;
	int err;

	err = op_begin(op, &au, "service-set");
	if (!err)
		err = service_find(st, spec->name, &svc, &rec);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec.name);
	au.gen_before = au.gen_after = op->generation = switch_read(st, svc).generation;
	snprintf(au.from, sizeof(au.from), "table-size %u, split-by %s", rec.table_size,
		 split_name(rec.vip_flags));
	snprintf(au.to, sizeof(au.to), "table-size %u, split-by %s",
		 spec->set_table ? spec->table_size : rec.table_size,
		 split_name(spec->set_split ? spec->vip_flags : rec.vip_flags));
	if (spec->set_table)
		err = service_set_table(st, svc, &rec, spec->table_size, op);
	au.gen_after = op->generation;
	if (!err && spec->set_split)
		err = service_set_split(st, svc, &rec, spec->vip_flags, op);
out:
	return op_end(op, &au, err);
}

/* ---- service del ---- */

/* The live flows of the service's backends. */
static int service_live(const struct bgs_state *st, __u32 svc, __u64 *live)
{
	struct bgs_flow_census *census = malloc(sizeof(*census));
	struct bgs_backend be;
	__u32 slot;
	int err;

	*live = 0;
	if (!census)
		return -ENOMEM;
	err = flows_census(st, census);
	for (slot = 0; slot < BGS_MAX_SLOTS && !err; slot++)
		if (backend_get(st, slot, &be) && be.state != BGS_BACKEND_FREE && be.svc == svc)
			*live += census->live[slot];
	free(census);
	return err;
}

/* The VIP entry goes first: from then on the data plane no longer sees the service, and a
 * command killed after this point leaves an invisible record that repair collects.
 */
static int service_remove(struct bgs_state *st, __u32 svc, const struct bgs_service *rec)
{
	struct bgs_vip_addr va = { .family = rec->vip.family };
	struct bgs_switch zero_sw = { 0 };
	struct bgs_service blank = { 0 };
	struct bgs_backend be;
	__u32 slot;
	int err;

	err = vip_del(st, &rec->vip);
	if (err) {
		pr_warn("cannot delete the VIP entry: %s\n", strerror(-err));
		return err;
	}
	fault_point("service-del-after-vip");
	memcpy(va.addr, rec->vip.addr, sizeof(va.addr));
	refcount_add(st, BGS_M_VIP_ADDRS, &va, -1);
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (!backend_get(st, slot, &be) || be.state == BGS_BACKEND_FREE || be.svc != svc)
			continue;
		err = slot_release(st, slot);
		if (err)
			return err;
	}
	err = tables_clear(st, svc);
	if (err)
		return err;
	switch_write(st, svc, zero_sw);
	fault_point("service-del-before-record");
	service_put(st, svc, &blank);
	return 0;
}

int bgs_service_del(struct bgs_state *st, const struct bgs_service_spec *spec, struct bgs_op *op)
{
	struct bgs_audit au = { .fd = -1 };
	char ebuf[BGS_ADDRSTR_LEN];
	struct bgs_service rec;
	__u32 svc;
	int err;

	err = op_begin(op, &au, "service-del");
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%.*s", BGS_NAME_LEN - 1, spec->name);
	if (!service_record_named(st, spec->name)) {
		pr_warn("unknown service '%s'\n", spec->name);
		err = -ENOENT;
		au.service[0] = '\0'; /* not a change: not for the trail */
		goto out;
	}
	if (!bgs_service_visible(st, spec->name, &svc, &rec)) {
		/* Only an unfinished record: the repair finishes the delete. */
		err = state_repair(st);
		op->done = BGS_DONE_FINISHED;
		snprintf(au.detail, sizeof(au.detail), "finished an interrupted delete");
		goto out;
	}
	err = state_repair(st);
	if (err)
		goto out;
	au.gen_before = switch_read(st, svc).generation;
	snprintf(au.from, sizeof(au.from), "%s/%s",
		 fmt_endpoint(rec.vip.addr, rec.vip.port, rec.vip.family, ebuf, sizeof(ebuf)),
		 proto_name(rec.vip.proto));
	err = service_live(st, svc, &op->live);
	if (!err && op->live && !spec->force) {
		pr_warn("service '%s' has %llu live flows; --force deletes it and cuts them\n",
			rec.name, (unsigned long long)op->live);
		err = -EBUSY;
	}
	if (!err)
		err = service_remove(st, svc, &rec);
	if (err)
		goto out;
	op->done = BGS_DONE_REMOVED;
	if (op->live)
		snprintf(au.detail, sizeof(au.detail), "%llu live flows cut",
			 (unsigned long long)op->live);
out:
	return op_end(op, &au, err);
}

/* ---- backends ---- */

struct backend_args {
	struct bgs_state *st;
	const struct bgs_backend_spec *spec;
	struct bgs_service rec;
	struct bgs_set set;
	char ebuf[BGS_ADDRSTR_LEN]; /* the backend's address, as messages name it */
	__u32 svc;
	int pos; /* index of the backend in the color's current set, or -1 */
	bool had_slot; /* a slot of this backend was in use before the repair */
};

/* A slot of this service, color and address in use (active or draining). */
static bool backend_find_slot(const struct backend_args *a, __u32 *out)
{
	struct bgs_backend be;
	__u32 slot;

	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (backend_get(a->st, slot, &be) && be.state != BGS_BACKEND_FREE &&
		    slot_matches(&be, a->svc, a->spec->color, &a->spec->ep)) {
			*out = slot;
			return true;
		}
	}
	return false;
}

/* A free slot that still names this service, color and address: the backend was removed
 * (slot_release() keeps whose a slot was until it is used again).
 */
static bool backend_was_removed(const struct backend_args *a)
{
	struct bgs_backend be;
	__u32 slot;

	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (backend_get(a->st, slot, &be) && be.state == BGS_BACKEND_FREE &&
		    be.family == a->spec->ep.family &&
		    slot_matches(&be, a->svc, a->spec->color, &a->spec->ep))
			return true;
	}
	return false;
}

/* Find the service, check the generation and that the backend can be one of it, repair, and
 * find the backend in the color's current set. The audit record learns the service on the way.
 */
static int backend_prepare(struct bgs_op *op, struct bgs_audit *au, struct backend_args *a)
{
	const struct bgs_backend_spec *sp = a->spec;
	struct bgs_endpoint vip;
	struct bgs_backend be;
	__u32 i, slot;
	int err;

	fmt_endpoint(sp->ep.addr, sp->ep.port, sp->ep.family, a->ebuf, sizeof(a->ebuf));
	err = service_find(a->st, sp->service, &a->svc, &a->rec);
	if (!err) {
		snprintf(au->service, sizeof(au->service), "%s", a->rec.name);
		au->gen_before = au->gen_after = switch_read(a->st, a->svc).generation;
		err = generation_check(a->st, a->svc, a->rec.name, op->if_generation);
	}
	if (!err) {
		memset(&vip, 0, sizeof(vip));
		memcpy(vip.addr, a->rec.vip.addr, sizeof(vip.addr));
		vip.port = a->rec.vip.port;
		vip.family = a->rec.vip.family;
		err = check_backend_of(a->ebuf, &sp->ep, &vip, a->rec.name);
	}
	if (!err) {
		a->had_slot = backend_find_slot(a, &slot);
		err = state_repair(a->st);
	}
	if (!err)
		err = set_read(a->st, a->svc, sp->color, &a->set);
	if (err)
		return err;
	a->pos = -1;
	for (i = 0; i < a->set.count && a->pos < 0; i++)
		if (backend_get(a->st, a->set.slot[i], &be) &&
		    !memcmp(be.addr, sp->ep.addr, sizeof(be.addr)) && be.port == sp->ep.port)
			a->pos = i;
	return 0;
}

/* "blue/10.0.1.1:8080": a backend as the audit trail names it. */
static void backend_label(const struct backend_args *a, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", color_name(a->spec->color), a->ebuf);
}

/* A reply finds its flow under each service its backend's address and port serve, up to
 * BGS_ADDR_SVCS of them: refuse one more.
 */
static int backend_services_check(const struct backend_args *a)
{
	struct bgs_backend_addr ba = { 0 };
	struct bgs_backend_ref ref;
	__u32 i;

	memcpy(ba.addr, a->spec->ep.addr, sizeof(ba.addr));
	ba.port = a->spec->ep.port;
	ba.proto = a->rec.vip.proto;
	ba.family = a->spec->ep.family;
	if (!backend_ref_get(a->st, &ba, &ref) || ref.nsvc < BGS_ADDR_SVCS)
		return 0;
	for (i = 0; i < ref.nsvc; i++)
		if (ref.svc[i] == a->svc)
			return 0;
	pr_warn("%s already serves %d services, the most one backend address and port can\n",
		a->ebuf, BGS_ADDR_SVCS);
	return -ENOSPC;
}

/* A slot for the backend: its own draining slot if it is coming back, else a free one. */
static int backend_slot(const struct backend_args *a, __u32 *out)
{
	struct bgs_backend be;
	__u32 slot, free_slot = BGS_MAX_SLOTS;

	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (!backend_get(a->st, slot, &be))
			return errno ? -errno : -EIO;
		if (be.state == BGS_BACKEND_FREE) {
			if (free_slot == BGS_MAX_SLOTS)
				free_slot = slot;
			continue;
		}
		if (be.state == BGS_BACKEND_DRAINING &&
		    slot_matches(&be, a->svc, a->spec->color, &a->spec->ep)) {
			*out = slot;
			return 0;
		}
	}
	if (free_slot == BGS_MAX_SLOTS) {
		pr_warn("no free backend slot (the build allows %d)\n", BGS_MAX_SLOTS);
		return -ENOSPC;
	}
	*out = free_slot;
	return 0;
}

/* The backend is there already: with another weight, change its weight. */
static int backend_reweigh(struct backend_args *a, struct bgs_audit *au, struct bgs_op *op)
{
	__u32 slot = a->set.slot[a->pos];
	int weight = a->spec->weight;
	struct bgs_backend be;
	__u16 old;
	int err;

	if (!backend_get(a->st, slot, &be))
		return -errno;
	if (weight < 0 || be.weight == weight) {
		pr_warn("%s is already a %s backend of '%s'\n", a->ebuf, color_name(a->spec->color),
			a->rec.name);
		return -EEXIST;
	}
	snprintf(au->detail, sizeof(au->detail), "weight %u -> %d", be.weight, weight);
	old = be.weight;
	be.weight = weight;
	err = backend_put(a->st, slot, &be);
	if (err)
		return err;
	err = set_commit(a->st, a->svc, a->spec->color, &a->set);
	if (err) {
		/* the table in force still has the old weight: so must the record */
		be.weight = old;
		backend_put(a->st, slot, &be);
		return err;
	}
	op->done = BGS_DONE_REWEIGHED;
	return 0;
}

/* Everything that keeps a new backend out, checked before anything is written. */
static int backend_add_check(const struct backend_args *a)
{
	__u8 color = a->spec->color, ocolor = !color;
	struct bgs_backend be;
	struct bgs_set other;
	__u32 i;
	int err;

	err = set_read(a->st, a->svc, ocolor, &other);
	for (i = 0; i < other.count && !err; i++) {
		if (backend_get(a->st, other.slot[i], &be) &&
		    !memcmp(be.addr, a->spec->ep.addr, sizeof(be.addr)) &&
		    be.port == a->spec->ep.port) {
			pr_warn("%s is a %s backend of '%s'; a backend serves one color\n", a->ebuf,
				color_name(ocolor), a->rec.name);
			return -EEXIST;
		}
	}
	if (!err)
		err = backend_services_check(a);
	if (err)
		return err;
	if (a->rec.lb == BGS_LB_MAGLEV && a->set.count >= a->rec.table_size) {
		pr_warn("%s of '%s' has %u backends, as many as its table has positions (raise "
			"--table-size with 'service set')\n",
			color_name(color), a->rec.name, a->set.count);
		return -ENOSPC;
	}
	if (a->set.count >= BGS_MAX_BACKENDS) {
		pr_warn("%s of '%s' is full (%d backends)\n", color_name(color), a->rec.name,
			BGS_MAX_BACKENDS);
		return -ENOSPC;
	}
	return 0;
}

/* A new backend: its slot, the egress filter, then the color's set and table. */
static int backend_insert(struct backend_args *a, struct bgs_op *op)
{
	const struct bgs_backend_spec *sp = a->spec;
	struct bgs_backend be = { 0 };
	__u32 slot = 0;
	int err;

	err = backend_slot(a, &slot);
	if (err)
		return err;
	memcpy(be.addr, sp->ep.addr, sizeof(be.addr));
	be.port = sp->ep.port;
	be.family = sp->ep.family;
	be.state = BGS_BACKEND_ACTIVE;
	be.svc = a->svc;
	be.color = sp->color;
	be.proto = a->rec.vip.proto;
	be.weight = sp->weight < 0 ? 1 : sp->weight;
	err = backend_put(a->st, slot, &be);
	if (err) {
		pr_warn("cannot write the backend: %s\n", strerror(-err));
		return err;
	}
	/* The egress filter learns the address before any flow can go there. */
	err = addrs_resync(a->st);
	if (err)
		return err;
	/* Killed here, the slot is active but in no set: repair collects it. */
	fault_point("backend-add-before-commit");
	a->set.slot[a->set.count++] = slot;
	err = set_commit(a->st, a->svc, sp->color, &a->set);
	if (err)
		return err;
	op->done = BGS_DONE_ADDED;
	op->count = a->set.count;
	return 0;
}

int bgs_backend_set(struct bgs_state *st, const struct bgs_backend_spec *spec, struct bgs_op *op)
{
	struct backend_args a = { .st = st, .spec = spec };
	struct bgs_audit au = { .fd = -1 };
	int err;

	err = op_begin(op, &au, "backend-add");
	if (!err)
		err = backend_prepare(op, &au, &a);
	if (err)
		goto out;
	backend_label(&a, au.to, sizeof(au.to));
	if (spec->weight >= 0 && spec->weight != 1 && a.rec.lb != BGS_LB_MAGLEV) {
		pr_warn("--weight: '%s' spreads flows by modulo (--lb modulo), without weights\n",
			a.rec.name);
		err = -EINVAL;
		goto out;
	}
	if (a.pos >= 0) {
		err = backend_reweigh(&a, &au, op);
	} else {
		err = backend_add_check(&a);
		if (!err)
			err = backend_insert(&a, op);
	}
	if (!err)
		au.gen_after = op->generation = switch_read(st, a.svc).generation;
out:
	return op_end(op, &au, err);
}

/* backend del of a backend out of the set already: draining, or an earlier removal that was
 * interrupted. --force cuts a draining backend's flows.
 */
static int backend_del_gone(struct backend_args *a, const struct bgs_flow_census *census,
			    struct bgs_audit *au, struct bgs_op *op)
{
	__u32 slot;
	int err;

	if (backend_find_slot(a, &slot)) {
		op->live = census->live[slot];
		if (!a->spec->force || !op->live) {
			op->done = BGS_DONE_OUT_OF_SET;
			au->service[0] = '\0'; /* nothing changed */
			return 0;
		}
		err = slot_release(a->st, slot);
		if (err)
			return err;
		snprintf(au->detail, sizeof(au->detail), "draining; %llu live flows cut",
			 (unsigned long long)op->live);
		op->done = BGS_DONE_REMOVED;
		return 0;
	}
	if (a->had_slot) {
		snprintf(au->detail, sizeof(au->detail), "finished an interrupted removal");
		op->done = BGS_DONE_FINISHED;
		return 0;
	}
	if (backend_was_removed(a)) {
		/* Its removal finished; only the command was cut short (README: a re-run says so
		 * and exits 0).
		 */
		op->done = BGS_DONE_NOTHING;
		au->service[0] = '\0'; /* nothing changed */
		return 0;
	}
	pr_warn("%s is not a %s backend of '%s'\n", a->ebuf, color_name(a->spec->color),
		a->rec.name);
	return -ENOENT;
}

/* backend del of a backend in the set: out of it, then its slot released or left draining. */
static int backend_del_set(struct backend_args *a, const struct bgs_flow_census *census,
			   struct bgs_audit *au, struct bgs_op *op)
{
	__u32 slot = a->set.slot[a->pos];
	struct bgs_backend be;
	int err;

	if (!backend_get(a->st, slot, &be))
		return -errno;
	op->live = census->live[slot];
	if (op->live && !a->spec->drain && !a->spec->force) {
		pr_warn("%s backend %s of '%s' still has %llu live flows; --drain lets them "
			"finish, --force cuts them\n",
			color_name(a->spec->color), a->ebuf, a->rec.name,
			(unsigned long long)op->live);
		return -EBUSY;
	}
	a->set.slot[a->pos] = a->set.slot[--a->set.count];
	a->set.slot[a->set.count] = 0;
	err = set_commit(a->st, a->svc, a->spec->color, &a->set);
	if (err)
		return err;
	au->gen_after = op->generation = switch_read(a->st, a->svc).generation;
	/* Killed here, the slot is active but in no set: repair treats it as draining. */
	fault_point("backend-del-after-commit");
	if (op->live && a->spec->drain) {
		/* The slot outlives its place in the set while flows still point at it. */
		be.state = BGS_BACKEND_DRAINING;
		backend_put(a->st, slot, &be);
		snprintf(au->detail, sizeof(au->detail), "draining %llu live flows",
			 (unsigned long long)op->live);
		op->done = BGS_DONE_DRAINING;
		return 0;
	}
	/* Its flow entries go with the slot: live ones are cut (--force). */
	err = slot_release(a->st, slot);
	if (err)
		return err;
	if (op->live)
		snprintf(au->detail, sizeof(au->detail), "%llu live flows cut",
			 (unsigned long long)op->live);
	op->done = BGS_DONE_REMOVED;
	return 0;
}

int bgs_backend_del(struct bgs_state *st, const struct bgs_backend_spec *spec, struct bgs_op *op)
{
	struct backend_args a = { .st = st, .spec = spec };
	struct bgs_flow_census *census = NULL;
	struct bgs_audit au = { .fd = -1 };
	int err;

	err = op_begin(op, &au, "backend-del");
	if (!err)
		err = backend_prepare(op, &au, &a);
	if (err)
		goto out;
	backend_label(&a, au.from, sizeof(au.from));
	census = malloc(sizeof(*census));
	if (!census) {
		err = -ENOMEM;
		goto out;
	}
	err = flows_census(st, census);
	if (err)
		goto out;
	if (a.pos < 0)
		err = backend_del_gone(&a, census, &au, op);
	else
		err = backend_del_set(&a, census, &au, op);
out:
	free(census);
	return op_end(op, &au, err);
}

/* ---- one parsed change ---- */

int bgs_change_apply(struct bgs_state *st, const struct bgs_change *ch, struct bgs_op *op)
{
	op->reason = ch->reason;
	op->if_generation = ch->if_generation;
	switch (ch->kind) {
	case BGS_CH_SERVICE_ADD:
		return bgs_service_add(st, &ch->svc, op);
	case BGS_CH_SERVICE_SET:
		return bgs_service_set(st, &ch->svc, op);
	case BGS_CH_SERVICE_DEL:
		return bgs_service_del(st, &ch->svc, op);
	case BGS_CH_BACKEND_ADD:
		return bgs_backend_set(st, &ch->be, op);
	case BGS_CH_BACKEND_DEL:
		return bgs_backend_del(st, &ch->be, op);
	default:
		pr_warn("not a change of a service or a backend\n");
		return -EINVAL;
	}
}
