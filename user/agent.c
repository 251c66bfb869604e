// SPDX-License-Identifier: GPL-2.0
/* agent.c: `agent`: one node of a fleet. It watches the desired state of every service under
 * <prefix>/services/ in etcd and applies it to the local pinned state, and reports what it
 * applied under <prefix>/nodes/<node> with a lease (a dead agent's report expires).
 *
 * On start and after every reconnect it reconciles fully (ranges the prefix at revision R,
 * applies every document, deletes the local services that are not there) and then watches
 * from R + 1: no event is missed or replayed. A compacted watch reconciles again. While etcd is
 * unreachable the node keeps forwarding with what it applied last and the agent retries with
 * backoff (100 ms doubling to 5 s); the data plane never depends on the agent being alive.
 *
 * The agent owns every service of its pin root. It applies a document with the operations the
 * local commands run (ops.h: service add/set/del, backend add/del draining, each under the state
 * lock, errors as values) and the color with agent_apply_switch(), the one place that reads or
 * writes the switch word.
 */
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <bpf/bpf.h>

#include "commands.h"
#include "fleet.h"
#include "log.h"
#include "ops.h"
#include "specs.h"
#include "state.h"

#define MS 1000000ULL
#define LEASE_TTL 5 /* seconds */
#define KEEPALIVE_NS (1500 * MS)
#define REPORT_NS (2000 * MS)
#define RECONCILE_NS (30000 * MS) /* a full reconcile also undoes local drift */
#define RETRY_NS (10000 * MS) /* how soon a change that could not be applied is tried again */
#define BACKOFF_MIN_NS (100 * MS)
#define BACKOFF_MAX_NS (5000 * MS)
#define MAX_SVCS BGS_MAX_SERVICES

/* What the agent applied, per service name. */
struct agent_svc {
	char name[FLEET_KEY_NAME_LEN]; /* a refused document's key may be longer than a name */
	bool used;
	bool seen; /* in the desired state of the current reconcile */
	__s64 generation; /* fleet generation applied, -1: none yet */
	__s32 share; /* green share in force locally */
	__u64 applied_us;
	__u64 live[BGS_NCOLORS];
	__s64 refused_rev; /* the revision of a document that is not valid, 0: none */
	char error[400];
};

struct agent {
	struct fleet_conn conn;
	const char *node;
	struct etcd e;
	struct bgs_state st;
	bool st_open;
	__s64 lease;
	__s64 rev; /* etcd revision the local state reflects */
	struct agent_svc svcs[MAX_SVCS];
	char error[256];
	bool seen_any; /* some reconcile found a service in etcd */
	bool dirty; /* the report changed since it was last written */
	__u64 last_keepalive, last_report, last_census, last_reconcile;
};

static volatile sig_atomic_t agent_stop;

static void on_signal(int sig)
{
	(void)sig;
	agent_stop = 1;
}

static struct agent_svc *svc_get(struct agent *ag, const char *name, bool create)
{
	struct agent_svc *free_one = NULL;
	int i;

	for (i = 0; i < MAX_SVCS; i++) {
		if (ag->svcs[i].used && !strncmp(ag->svcs[i].name, name, FLEET_KEY_NAME_LEN - 1))
			return &ag->svcs[i];
		if (!ag->svcs[i].used && !free_one)
			free_one = &ag->svcs[i];
	}
	if (!create || !free_one)
		return NULL;
	memset(free_one, 0, sizeof(*free_one));
	free_one->used = true;
	free_one->generation = -1;
	free_one->share = -1;
	snprintf(free_one->name, sizeof(free_one->name), "%s", name);
	return free_one;
}

/* The one function of the agent that reads or writes struct bgs_switch (the data plane's
 * switch word): the local green share of service svc is made `share` (0: blue, 10000: green,
 * a split in between), under the state lock, with the semantics of a local flip or shift (the
 * previous share kept for the second chance and rollback, draining flag, local generation + 1).
 * share < 0 only reads. *now: the share in force afterwards.
 */
static int agent_apply_switch(struct agent *ag, __u32 svc, __s32 share, __s32 *now)
{
	int lock_fd = -1, err = 0;
	bool changed = false;
	char pct[16];

	if (share < 0) {
		*now = switch_read(&ag->st, svc).share;
		return 0;
	}
	if (share > FLEET_SHARE_MAX)
		return -EINVAL;
	err = state_lock(&lock_fd);
	if (!err)
		err = bgs_switch_set(&ag->st, svc, share, NULL, NULL, &changed);
	if (changed)
		pr_info("agent: service %u -> green %s (local generation %u)\n", svc,
			fmt_share(share, pct, sizeof(pct)), switch_read(&ag->st, svc).generation);
	if (!err)
		*now = share;
	if (lock_fd >= 0)
		close(lock_fd);
	return err;
}

/* One document being applied: what its changes need, and why one failed (one line). */
struct apply {
	struct agent *ag;
	const struct fleet_service *s;
	__u32 svc;
	char reason[128];
	char why[256];
};

/* A change of the document's service, with the agent's reason for the audit trail. */
static void change_init(const struct apply *ap, struct bgs_change *ch, enum bgs_change_kind kind)
{
	memset(ch, 0, sizeof(*ch));
	ch->kind = kind;
	ch->if_generation = -1;
	ch->reason = ap->reason;
	snprintf(ch->service, sizeof(ch->service), "%s", ap->s->name);
	snprintf(ch->svc.name, sizeof(ch->svc.name), "%s", ap->s->name);
	snprintf(ch->be.service, sizeof(ch->be.service), "%s", ap->s->name);
	ch->be.weight = -1;
}

/* Apply one change to the local state as a command does: the state opened afresh (the pins may
 * be new since the last reconcile) and locked. A failure's message (the operation's error) goes
 * to why.
 */
static int agent_change(struct agent *ag, const struct bgs_change *ch, char *why, size_t len)
{
	static const char *const done[] = {
		[BGS_CH_SERVICE_ADD] = "added",	  [BGS_CH_SERVICE_SET] = "set",
		[BGS_CH_SERVICE_DEL] = "deleted", [BGS_CH_BACKEND_ADD] = "added",
		[BGS_CH_BACKEND_DEL] = "removed",
	};
	struct bgs_op op = { 0 };
	struct bgs_state st;
	int err;

	bgs_log_error_to(op.error, sizeof(op.error));
	err = state_open(&st, true);
	bgs_log_error_to(NULL, 0);
	if (!err) {
		err = bgs_change_apply(&st, ch, &op);
		state_close(&st);
	}
	if (err) {
		snprintf(why, len, "%s", op.error);
		return err;
	}
	if (op.done == BGS_DONE_NOTHING && !op.did)
		return 0;
	if (ch->kind == BGS_CH_BACKEND_ADD || ch->kind == BGS_CH_BACKEND_DEL)
		pr_info("agent %s: %s: %s backend %s %s\n", ag->node, ch->service,
			color_name(ch->be.color), ch->addr_text,
			op.done == BGS_DONE_REWEIGHED ? "reweighed" : done[ch->kind]);
	else
		pr_info("agent %s: service %s %s\n", ag->node, ch->service, done[ch->kind]);
	return 0;
}

static bool ep_eq(const struct bgs_endpoint *a, const struct bgs_endpoint *b)
{
	return a->family == b->family && a->port == b->port &&
	       !memcmp(a->addr, b->addr, sizeof(a->addr));
}

/* The backend is in the current set of that color of the local service. */
static bool local_has(const struct agent *ag, __u32 svc, __u8 color, const struct bgs_endpoint *ep)
{
	struct bgs_backend_spec *lb = calloc(BGS_MAX_BACKENDS, sizeof(*lb));
	bool found = false;
	__u32 n = 0, j;

	if (lb && !bgs_backends_read(&ag->st, svc, color, lb, &n))
		for (j = 0; j < n && !found; j++)
			found = ep_eq(&lb[j].ep, ep);
	free(lb);
	return found;
}

/* The backend is in that color of the document. */
static bool doc_has(const struct fleet_service *s, __u8 color, const struct bgs_endpoint *ep)
{
	struct bgs_endpoint de;
	__u32 i;

	for (i = 0; i < s->nbe[color]; i++)
		if (!parse_endpoint(s->be[color][i].addr, &de) && ep_eq(&de, ep))
			return true;
	return false;
}

/* Add the document's backends of one color that the local set lacks (or has with another
 * weight). A backend moving from the other color is added once it has left it.
 */
static int sync_add(struct apply *ap, __u8 color)
{
	struct bgs_backend_spec *lb = calloc(BGS_MAX_BACKENDS, sizeof(*lb));
	const struct fleet_service *s = ap->s;
	struct bgs_change ch;
	__u32 n = 0, i, j;
	bool have;
	int err;

	if (!lb)
		return -ENOMEM;
	err = bgs_backends_read(&ap->ag->st, ap->svc, color, lb, &n);
	for (i = 0; i < s->nbe[color] && !err; i++) {
		change_init(ap, &ch, BGS_CH_BACKEND_ADD);
		ch.be.color = color;
		ch.be.weight = s->be[color][i].weight;
		snprintf(ch.addr_text, sizeof(ch.addr_text), "%s", s->be[color][i].addr);
		if (parse_endpoint(ch.addr_text, &ch.be.ep)) {
			err = -EINVAL;
			break;
		}
		for (j = 0, have = false; j < n; j++)
			if (ep_eq(&lb[j].ep, &ch.be.ep))
				have = lb[j].weight == ch.be.weight;
		if (have || local_has(ap->ag, ap->svc, !color, &ch.be.ep))
			continue;
		err = agent_change(ap->ag, &ch, ap->why, sizeof(ap->why));
	}
	free(lb);
	return err;
}

/* Remove, with their flows draining, the local backends of one color the document lacks. */
static int sync_del(struct apply *ap, __u8 color)
{
	struct bgs_backend_spec *lb = calloc(BGS_MAX_BACKENDS, sizeof(*lb));
	struct bgs_change ch;
	__u32 n = 0, j;
	int err;

	if (!lb)
		return -ENOMEM;
	err = bgs_backends_read(&ap->ag->st, ap->svc, color, lb, &n);
	for (j = 0; j < n && !err; j++) {
		if (doc_has(ap->s, color, &lb[j].ep))
			continue;
		change_init(ap, &ch, BGS_CH_BACKEND_DEL);
		ch.be.color = color;
		ch.be.ep = lb[j].ep;
		ch.be.drain = true;
		fmt_endpoint(lb[j].ep.addr, lb[j].ep.port, lb[j].ep.family, ch.addr_text,
			     sizeof(ch.addr_text));
		err = agent_change(ap->ag, &ch, ap->why, sizeof(ap->why));
	}
	free(lb);
	return err;
}

/* Delete the local service (its flows cut); cause: why, for the audit trail. */
static int local_delete(struct agent *ag, const char *name, const char *cause, char *why,
			size_t len)
{
	struct bgs_change ch = { .kind = BGS_CH_SERVICE_DEL, .if_generation = -1 };
	char reason[128];

	snprintf(ch.service, sizeof(ch.service), "%s", name);
	snprintf(ch.svc.name, sizeof(ch.svc.name), "%s", name);
	ch.svc.force = true;
	snprintf(reason, sizeof(reason), "fleet agent %s: %s", ag->node, cause);
	ch.reason = reason;
	return agent_change(ag, &ch, why, len);
}

/* Another local service with the VIP (address, port, protocol) of the document: a document the
 * node cannot take without first deleting its own service, so it is refused before any change.
 */
static int vip_taken(struct apply *ap)
{
	const struct fleet_service *s = ap->s;
	struct bgs_vip_key key = { .port = s->vip_ep.port,
				   .proto = s->proto,
				   .family = s->vip_ep.family };
	struct bgs_service rec;
	__u32 owner;

	memcpy(key.addr, s->vip_ep.addr, sizeof(key.addr));
	if (!bgs_vip_owner(&ap->ag->st, &key, &owner) || !service_get(&ap->ag->st, owner, &rec) ||
	    !strncmp(rec.name, s->name, BGS_NAME_LEN))
		return 0;
	snprintf(ap->why, sizeof(ap->why), "%s/%s belongs to service '%s' on this node", s->vip,
		 proto_name(s->proto), rec.name);
	pr_warn("%s\n", ap->why);
	return -EEXIST;
}

/* The local service as the document defines it: added, or set, or deleted and added again
 * when its VIP or --lb changed. ap->svc: its index.
 */
static int apply_service(struct apply *ap)
{
	const struct fleet_service *s = ap->s;
	struct bgs_service rec;
	struct bgs_change ch;
	bool have;
	int err;

	err = vip_taken(ap);
	if (err)
		return err;
	have = bgs_service_visible(&ap->ag->st, s->name, &ap->svc, &rec);
	if (have && (rec.vip.family != s->vip_ep.family || rec.vip.port != s->vip_ep.port ||
		     rec.vip.proto != s->proto || rec.lb != s->lb ||
		     memcmp(rec.vip.addr, s->vip_ep.addr, sizeof(rec.vip.addr)))) {
		err = local_delete(ap->ag, s->name, "its VIP or --lb changed", ap->why,
				   sizeof(ap->why));
		if (err)
			return err;
		have = false;
	}
	if (have && rec.vip_flags == s->vip_flags &&
	    (s->lb != BGS_LB_MAGLEV || rec.table_size == s->table_size))
		return 0;
	change_init(ap, &ch, have ? BGS_CH_SERVICE_SET : BGS_CH_SERVICE_ADD);
	snprintf(ch.addr_text, sizeof(ch.addr_text), "%s", s->vip);
	ch.svc.vip = s->vip_ep;
	ch.svc.proto = s->proto;
	ch.svc.lb = s->lb;
	ch.svc.table_size = s->table_size ? s->table_size : BGS_TABLE_SIZE;
	ch.svc.vip_flags = s->vip_flags;
	ch.svc.set_split = true;
	ch.svc.set_table = s->lb == BGS_LB_MAGLEV; /* a modulo service has no table */
	err = agent_change(ap->ag, &ch, ap->why, sizeof(ap->why));
	if (!err && !have && !bgs_service_visible(&ap->ag->st, s->name, &ap->svc, &rec))
		err = -ENOENT;
	return err;
}

/* The document's green share, like a local flip or shift: never more new flows to a color that
 * cannot take them. *share: the share in force afterwards.
 */
static int apply_share(struct apply *ap, __s32 *share)
{
	const struct fleet_service *s = ap->s;
	struct bgs_set set;
	__u8 to;
	int err;

	err = agent_apply_switch(ap->ag, ap->svc, -1, share);
	if (err || *share == s->green_share)
		return err;
	to = s->green_share > *share ? BGS_GREEN : BGS_BLUE;
	err = set_read(&ap->ag->st, ap->svc, to, &set);
	if (!err && !set_takes_flows(&ap->ag->st, &set)) {
		snprintf(ap->why, sizeof(ap->why),
			 "%s: %s has no backends of weight above 0; not sending it more new flows",
			 s->name, color_name(to));
		pr_warn("%s\n", ap->why);
		return -ENOENT;
	}
	if (!err)
		err = agent_apply_switch(ap->ag, ap->svc, s->green_share, share);
	return err;
}

/* Apply one (valid) document to the local state; idempotent. */
static int apply_doc(struct agent *ag, const struct fleet_service *s)
{
	struct agent_svc *as = svc_get(ag, s->name, true);
	struct apply ap = { .ag = ag, .s = s };
	__s32 share = 0;
	int err;

	if (!as)
		return -ENOSPC;
	as->seen = true;
	snprintf(ap.reason, sizeof(ap.reason), "fleet generation %lld via agent %s",
		 (long long)s->generation, ag->node);
	err = apply_service(&ap);
	/* New backends first, then the color, then the removals: a color is never left empty
	 * while it takes new flows. Last the backends that changed color, now out of their old one.
	 */
	if (!err)
		err = sync_add(&ap, BGS_BLUE);
	if (!err)
		err = sync_add(&ap, BGS_GREEN);
	if (!err)
		err = apply_share(&ap, &share);
	if (!err)
		err = sync_del(&ap, BGS_BLUE);
	if (!err)
		err = sync_del(&ap, BGS_GREEN);
	if (!err)
		err = sync_add(&ap, BGS_BLUE);
	if (!err)
		err = sync_add(&ap, BGS_GREEN);
	ag->dirty = true;
	if (err) {
		snprintf(as->error, sizeof(as->error), "generation %lld not applied: %s",
			 (long long)s->generation, ap.why[0] ? ap.why : strerror(-err));
		pr_warn("agent %s: %s: %s\n", ag->node, s->name, as->error);
		return err;
	}
	if (as->generation != s->generation) {
		as->applied_us = fleet_now_us();
		pr_info("agent %s: %s at fleet generation %lld (%s)\n", ag->node, s->name,
			(long long)s->generation, share_label(share));
	}
	as->generation = s->generation;
	as->share = share;
	as->error[0] = '\0';
	return 0;
}

/* A document from etcd (its key's name, value and mod_revision): decoded and checked whole, then
 * applied. One that is not valid changes nothing: the node keeps its last applied state and
 * reports the refusal with the document's revision.
 */
static void apply_kv(struct agent *ag, const char *name, const char *value, size_t len, __s64 rev)
{
	struct fleet_service *s = calloc(1, sizeof(*s));
	char why[FLEET_WHY_LEN];
	struct agent_svc *as;

	if (!s) {
		snprintf(ag->error, sizeof(ag->error), "out of memory");
		return;
	}
	if (!fleet_doc_decode(value, len, name, s, why, sizeof(why))) {
		as = svc_get(ag, s->name, false);
		if (as)
			as->refused_rev = 0;
		apply_doc(ag, s);
		goto out;
	}
	as = svc_get(ag, name, true);
	if (as) {
		as->seen = true;
		if (as->refused_rev != rev)
			pr_warn("agent %s: %.60s: the document at revision %lld is refused, nothing "
				"changed: %s\n",
				ag->node, name, (long long)rev, why);
		as->refused_rev = rev;
		snprintf(as->error, sizeof(as->error),
			 "the document at revision %lld is not valid: %s; the node keeps its last "
			 "applied state",
			 (long long)rev, why);
	}
	ag->dirty = true;
out:
	free(s);
}

static void delete_svc(struct agent *ag, const char *name)
{
	struct agent_svc *as = svc_get(ag, name, false);
	struct bgs_service rec;
	char why[256] = "";
	__u32 svc;

	if (bgs_service_visible(&ag->st, name, &svc, &rec) &&
	    local_delete(ag, name, "deleted from the fleet", why, sizeof(why))) {
		if (as)
			snprintf(as->error, sizeof(as->error), "delete not applied: %s", why);
		ag->dirty = true;
		return;
	}
	if (as)
		as->used = false;
	pr_info("agent %s: %s deleted\n", ag->node, name);
	ag->dirty = true;
}

static const char *svc_name_of(const struct agent *ag, const char *key)
{
	char pfx[256];
	size_t n;

	fleet_key(pfx, sizeof(pfx), ag->conn.prefix, "services", NULL);
	n = strlen(pfx);
	if (strncmp(key, pfx, n) || !key[n])
		return NULL;
	return key + n; /* checked with the document: a name that is not valid is reported */
}

/* Open the pinned state afresh: after a `detach --purge` and a new `attach` the maps are new. */
static int state_reopen(struct agent *ag)
{
	struct bgs_state st;
	int err = state_open(&st, false);

	if (err)
		return err;
	if (ag->st_open)
		state_close(&ag->st);
	ag->st = st;
	ag->st_open = true;
	return 0;
}

/* Range every document, apply each, delete what vanished. ag->rev: the range's revision. */
static int reconcile(struct agent *ag)
{
	struct bgs_service rec;
	struct etcd_kv *kvs = NULL;
	char key[256];
	size_t n = 0, i;
	__s64 rev = 0;
	__u32 svc;
	int err;

	fleet_key(key, sizeof(key), ag->conn.prefix, "services", NULL);
	err = etcd_range(&ag->e, key, true, &kvs, &n, &rev);
	if (!err)
		err = state_reopen(ag);
	if (err) {
		etcd_kvs_free(kvs, n);
		return err;
	}
	ag->last_reconcile = now_ns();
	for (i = 0; i < MAX_SVCS; i++)
		ag->svcs[i].seen = false;
	for (i = 0; i < n; i++) {
		const char *name = svc_name_of(ag, kvs[i].key);

		if (name)
			apply_kv(ag, name, kvs[i].value, kvs[i].vlen, kvs[i].mod_rev);
	}
	/* Local services the fleet no longer has; but an agent that has never seen a service in
	 * etcd (a wrong --prefix, an empty or wiped etcd) deletes nothing: it says so instead.
	 */
	if (!n && !ag->seen_any) {
		__u32 kept = 0;

		for (svc = 0; svc < BGS_MAX_SERVICES; svc++)
			kept += service_get(&ag->st, svc, &rec);
		if (kept) {
			snprintf(ag->error, sizeof(ag->error),
				 "no service under %s/services in etcd: %u local services kept",
				 ag->conn.prefix, kept);
			pr_warn("agent %s: %s\n", ag->node, ag->error);
			goto done;
		}
	}
	ag->seen_any = ag->seen_any || n;
	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		struct agent_svc *as;

		if (!service_get(&ag->st, svc, &rec))
			continue;
		as = svc_get(ag, rec.name, false);
		if (!as || !as->seen)
			delete_svc(ag, rec.name);
	}
	for (i = 0; i < MAX_SVCS; i++)
		if (ag->svcs[i].used && !ag->svcs[i].seen)
			ag->svcs[i].used = false;
	if (!strncmp(ag->error, "no service under", 16))
		ag->error[0] = '\0';
done:
	pr_debug("agent %s: reconciled %zu services at revision %lld\n", ag->node, n,
		 (long long)rev);
	ag->rev = rev;
	ag->dirty = true;
	etcd_kvs_free(kvs, n);
	return 0;
}

/* Live flows per color of every service, from one pass over the flow table. */
static int census(struct agent *ag)
{
	struct bgs_flow_census *c = malloc(sizeof(*c));
	__u64(*live)[BGS_NCOLORS] = calloc(BGS_MAX_SERVICES, sizeof(*live));
	struct bgs_service rec;
	struct bgs_backend be;
	__u32 slot, svc;
	int err, i, lock_fd = -1;

	if (!c || !live) {
		err = -ENOMEM;
		goto out;
	}
	err = flows_census(&ag->st, c);
	if (err)
		goto out;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++)
		if (c->live[slot] && !bpf_map_lookup_elem(ag->st.fd[BGS_M_BACKENDS], &slot, &be) &&
		    be.state != BGS_BACKEND_FREE && be.svc < BGS_MAX_SERVICES &&
		    be.color < BGS_NCOLORS)
			live[be.svc][be.color] += c->live[slot];
	for (i = 0; i < MAX_SVCS; i++)
		memset(ag->svcs[i].live, 0, sizeof(ag->svcs[i].live));
	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		struct agent_svc *as;

		if (!service_get(&ag->st, svc, &rec))
			continue;
		as = svc_get(ag, rec.name, false);
		if (as)
			memcpy(as->live, live[svc], sizeof(as->live));
	}
	/* Also the moment to clear the draining flag of colors that have drained: a switch write,
	 * so under the state lock like every other.
	 */
	err = state_lock(&lock_fd);
	if (!err)
		err = drain_settle(&ag->st);
	if (lock_fd >= 0)
		close(lock_fd);
out:
	free(c);
	free(live);
	return err;
}

static int report(struct agent *ag)
{
	json_object *o = json_object_new_object(), *svcs = json_object_new_object();
	bool healthy = !ag->error[0];
	char key[256];
	int i, err;

	for (i = 0; i < MAX_SVCS; i++) {
		struct agent_svc *as = &ag->svcs[i];
		json_object *s, *live;

		if (!as->used)
			continue;
		s = json_object_new_object();
		live = json_object_new_object();
		json_object_object_add(s, "generation", json_object_new_int64(as->generation));
		json_object_object_add(s, "green_share", json_object_new_int(as->share));
		json_object_object_add(s, "color",
				       json_object_new_string(as->share < 0 ? "none" :
							      as->share == FLEET_SHARE_MAX ?
									      "green" :
							      as->share ? "split" :
									  "blue"));
		json_object_object_add(s, "applied_us", json_object_new_int64(as->applied_us));
		json_object_object_add(live, "blue", json_object_new_int64(as->live[BGS_BLUE]));
		json_object_object_add(live, "green", json_object_new_int64(as->live[BGS_GREEN]));
		json_object_object_add(s, "live", live);
		json_object_object_add(s, "error", json_object_new_string(as->error));
		json_object_object_add(s, "refused_revision",
				       json_object_new_int64(as->refused_rev));
		json_object_object_add(svcs, as->name, s);
		if (as->error[0])
			healthy = false;
	}
	json_object_object_add(o, "node", json_object_new_string(ag->node));
	json_object_object_add(o, "health", json_object_new_string(healthy ? "ok" : "degraded"));
	json_object_object_add(o, "error", json_object_new_string(ag->error));
	json_object_object_add(o, "revision", json_object_new_int64(ag->rev));
	json_object_object_add(o, "updated_us", json_object_new_int64(fleet_now_us()));
	json_object_object_add(o, "pin_root", json_object_new_string(bgs_pin_root));
	json_object_object_add(o, "pid", json_object_new_int(getpid()));
	json_object_object_add(o, "services", svcs);
	fleet_key(key, sizeof(key), ag->conn.prefix, "nodes", ag->node);
	err = etcd_put(&ag->e, key, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
		       ag->lease);
	json_object_put(o);
	if (!err) {
		ag->dirty = false;
		ag->last_report = now_ns();
	}
	return err;
}

/* A lease of our own, and the membership record (no lease: a missing node stays known). */
static int lease_ensure(struct agent *ag, bool keepalive)
{
	char key[256], val[160];
	__s64 ttl = 0;
	int err;

	if (ag->lease && keepalive) {
		err = etcd_lease_keepalive(&ag->e, ag->lease, &ttl);
		if (err)
			return err;
		ag->last_keepalive = now_ns();
		if (ttl > 0)
			return 0;
		pr_info("agent %s: lease expired; a new one\n", ag->node);
		ag->lease = 0;
	}
	if (ag->lease)
		return 0;
	err = etcd_lease_grant(&ag->e, LEASE_TTL, &ag->lease);
	if (err)
		return err;
	ag->last_keepalive = now_ns();
	fleet_key(key, sizeof(key), ag->conn.prefix, "members", ag->node);
	snprintf(val, sizeof(val), "{\"node\":\"%s\",\"since_us\":%llu}", ag->node,
		 (unsigned long long)fleet_now_us());
	err = etcd_put(&ag->e, key, val, 0);
	ag->dirty = true;
	return err;
}

static int on_watch(json_object *res, void *ctx)
{
	struct agent *ag = ctx;
	json_object *evs, *v;
	size_t i, n;
	__s64 base;

	if ((json_object_object_get_ex(res, "canceled", &v) && json_object_get_boolean(v)) ||
	    etcd_json_int(res, "compact_revision")) {
		pr_info("agent %s: watch canceled (compacted at %lld): reconciling\n", ag->node,
			(long long)etcd_json_int(res, "compact_revision"));
		return -ESTALE;
	}
	if (!json_object_object_get_ex(res, "events", &evs))
		return 0;
	n = json_object_array_length(evs);
	/* Events of one transaction (or one prefix delete) share a revision: compare them all with
	 * the revision the state reflected before this response, and move it on afterwards.
	 */
	base = ag->rev;
	for (i = 0; i < n; i++) {
		json_object *ev = json_object_array_get_idx(evs, i), *jkv, *t;
		struct etcd_kv kv = { 0 };
		const char *name;
		bool del;

		if (!json_object_object_get_ex(ev, "kv", &jkv))
			continue;
		del = json_object_object_get_ex(ev, "type", &t) &&
		      !strcmp(json_object_get_string(t), "DELETE");
		if (etcd_json_int(jkv, "mod_revision") <= base)
			continue; /* already in the reconciled state */
		{
			json_object *k;
			size_t len;

			if (!json_object_object_get_ex(jkv, "key", &k) ||
			    etcd_b64_decode(json_object_get_string(k), &kv.key, &len))
				continue;
			kv.vlen = 0;
			if (!del && json_object_object_get_ex(jkv, "value", &k) &&
			    etcd_b64_decode(json_object_get_string(k), &kv.value, &kv.vlen)) {
				free(kv.key);
				continue;
			}
		}
		name = svc_name_of(ag, kv.key);
		if (name && del)
			delete_svc(ag, name);
		else if (name)
			apply_kv(ag, name, kv.value ? kv.value : "", kv.vlen,
				 etcd_json_int(jkv, "mod_revision"));
		ag->seen_any = true;
		if (etcd_json_int(jkv, "mod_revision") > ag->rev)
			ag->rev = etcd_json_int(jkv, "mod_revision");
		free(kv.key);
		free(kv.value);
	}
	return 0;
}

static bool agent_failing(const struct agent *ag)
{
	int i;

	for (i = 0; i < MAX_SVCS; i++)
		if (ag->svcs[i].used && ag->svcs[i].error[0])
			return true;
	return false;
}

/* One connected period: reconcile, lease, report, then the watch until it breaks. */
static int agent_session(struct agent *ag, __u64 *backoff)
{
	struct etcd_watch w = { 0 };
	bool watching = false;
	__u64 now;
	int err;

	err = reconcile(ag);
	if (!err)
		err = lease_ensure(ag, true);
	if (err)
		goto out;
	if (!strncmp(ag->error, "etcd:", 5))
		ag->error[0] = '\0'; /* connected again */
	census(ag);
	ag->last_census = now_ns();
	err = report(ag);
	if (err)
		goto out;
	pr_info("agent %s: connected to %s, watching from revision %lld\n", ag->node,
		etcd_endpoint(&ag->e), (long long)ag->rev + 1);
	*backoff = BACKOFF_MIN_NS;
	while (!agent_stop) {
		if (!watching) {
			char key[256];

			fleet_key(key, sizeof(key), ag->conn.prefix, "services", NULL);
			err = etcd_watch_start(&ag->e, &w, key, ag->rev + 1);
			if (err)
				goto out;
			watching = true;
		}
		err = etcd_watch_poll(&w, 100, on_watch, ag);
		if (err == -ESTALE) {
			etcd_watch_stop(&w);
			watching = false;
			err = reconcile(ag);
		}
		if (err)
			goto out;
		now = now_ns();
		if (now - ag->last_keepalive >= KEEPALIVE_NS) {
			err = lease_ensure(ag, true);
			if (err)
				goto out;
		}
		if (now - ag->last_reconcile >= (agent_failing(ag) ? RETRY_NS : RECONCILE_NS)) {
			err = reconcile(ag);
			if (err)
				goto out;
		}
		if (now - ag->last_census >= REPORT_NS) {
			ag->last_census = now;
			census(ag);
			ag->dirty = true;
		}
		if (ag->dirty) {
			err = report(ag);
			if (err)
				goto out;
		}
	}
out:
	if (watching)
		etcd_watch_stop(&w);
	return err;
}

static const struct bgs_opt agent_opts[] = {
	BGS_OPTS_FLEET_CONN(struct agent, conn, BGS_OPT_BOTH),
	{ .name = "node",
	  .short_name = 'N',
	  .type = BGS_OPT_STR,
	  .off = offsetof(struct agent, node),
	  .metavar = "NAME",
	  .help = "this node's name (default: the host name)" },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_agent = {
	.name = "agent",
	.summary = "run one node of a fleet: apply the desired state kept in etcd",
	.description =
		"Run one node of a fleet: apply the desired state of every service under "
		"PREFIX/services/ in etcd to this pin root as it changes, and report the "
		"applied generations, colors, live flows and health under PREFIX/nodes/NAME "
		"with a lease. The agent owns every service of its pin root. When etcd is "
		"unreachable the node keeps its last applied state and the agent retries "
		"(100 ms doubling to 5 s). A document that is not valid changes nothing: the "
		"node keeps its last applied state and reports the refusal with the "
		"document's revision. SIGTERM or SIGINT revokes the lease and exits 0.",
	.opts = agent_opts,
};

static void agent_sleep(__u64 ns)
{
	__u64 end = now_ns() + ns;

	while (!agent_stop && now_ns() < end)
		usleep(20000);
}

/* The agent's command line, and the node's name. Sets *help after --help. */
static int agent_parse(struct agent *ag, int argc, char **argv, char *host, bool *help)
{
	struct bgs_parsed p;
	int err;

	ag->conn.prefix = FLEET_DEFAULT_PREFIX;
	err = params_parse(&bgs_spec_agent, argc, argv, ag, &p);
	*help = p.help;
	if (err || p.help)
		return err;
	if (!ag->conn.eo.endpoints) {
		pr_warn("agent: --etcd URL is required\n");
		return -EINVAL;
	}
	if (!ag->node) {
		gethostname(host, FLEET_NODE_LEN - 1);
		ag->node = host;
	}
	return fleet_check_node(ag->node);
}

/* The pinned state may come later (an agent started before `attach`): wait for it. */
static void agent_wait_state(struct agent *ag)
{
	bool warned = false;

	while (!agent_stop) {
		if (!access(bgs_pin_root, F_OK) && !state_open(&ag->st, false)) {
			ag->st_open = true;
			return;
		}
		if (!warned)
			pr_warn("agent %s: waiting for the pinned state at %s\n", ag->node,
				bgs_pin_root);
		warned = true;
		agent_sleep(1000 * MS);
	}
}

/* Follow etcd until SIGTERM or SIGINT, retrying with backoff. */
static void agent_follow(struct agent *ag)
{
	__u64 backoff = BACKOFF_MIN_NS;
	int err;

	pr_info("agent %s: pin root %s, etcd %s, prefix %s\n", ag->node, bgs_pin_root,
		ag->conn.eo.endpoints, ag->conn.prefix);
	fflush(stdout);
	while (!agent_stop) {
		err = agent_session(ag, &backoff);
		if (agent_stop)
			break;
		if (backoff == BACKOFF_MIN_NS || bgs_verbosity > BGS_LOG_INFO)
			pr_warn("agent %s: cannot follow etcd (%s): forwarding goes on with the last "
				"applied state (revision %lld); retrying with backoff\n",
				ag->node, err == -ENOTCONN ? ag->e.last_error : strerror(-err),
				(long long)ag->rev);
		snprintf(ag->error, sizeof(ag->error), "etcd: %s", strerror(-err));
		fflush(stdout);
		agent_sleep(backoff);
		backoff = backoff * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : backoff * 2;
		/* The next endpoint, in case this one is the one that is gone. */
		ag->e.cur = (ag->e.cur + 1) % ag->e.nurl;
	}
}

int do_agent(int argc, char **argv)
{
	struct agent *ag = calloc(1, sizeof(*ag));
	struct sigaction sa = { 0 };
	char host[FLEET_NODE_LEN] = "";
	bool etcd_open_ok = false, help;
	int err;

	if (!ag)
		return -ENOMEM;
	err = agent_parse(ag, argc, argv, host, &help);
	if (err || help)
		goto out;
	err = state_need_root();
	if (!err)
		err = etcd_open(&ag->e, &ag->conn.eo);
	if (err)
		goto out;
	etcd_open_ok = true;
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	agent_wait_state(ag);
	if (!agent_stop)
		agent_follow(ag);
	if (ag->lease && etcd_lease_revoke(&ag->e, ag->lease))
		pr_debug("agent %s: could not revoke the lease (it expires)\n", ag->node);
	pr_info("agent %s: stopped\n", ag->node);
out:
	if (etcd_open_ok)
		etcd_close(&ag->e);
	if (ag->st_open)
		state_close(&ag->st);
	free(ag);
	return err;
}
