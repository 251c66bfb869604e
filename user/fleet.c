// SPDX-License-Identifier: GPL-2.0
/* fleet.c: the fleet forms of flip, shift, rollback, service, backend and status (`--etcd URL`).
 *
 * A change reads the service's document with its mod_revision, checks --if-generation against
 * the document's generation, builds the next document (generation + 1) and writes it with one
 * etcd transaction that compares the mod_revision (create_revision 0 for a new service): of two
 * racing writers exactly one wins, the other gets the exit status of a generation mismatch.
 * The agents on the nodes (agent.c) apply it; --wait waits until every live node reports it.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fleet.h"
#include "ops.h"
#include "maglev.h"
#include "log.h"
#include "state.h"

#define MS 1000000ULL
#define WAIT_POLL_NS (5 * MS)
#define MAX_NODES 1024

__u64 fleet_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (__u64)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool name_chars(const char *s, const char *extra)
{
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || strchr(extra, *s)))
			return false;
	return true;
}

int fleet_check_prefix(const char *prefix)
{
	size_t n = strlen(prefix);

	if (prefix[0] != '/' || n < 2 || n >= FLEET_PREFIX_LEN || prefix[n - 1] == '/' ||
	    strstr(prefix, "//") || !name_chars(prefix, "/._-")) {
		pr_warn("--prefix '%s': an absolute key prefix like /bgswitch (A-Z a-z 0-9 / . _ -, "
			"no trailing /, under %d characters)\n",
			prefix, FLEET_PREFIX_LEN);
		return -EINVAL;
	}
	return 0;
}

int fleet_check_node(const char *node)
{
	if (!node[0] || strlen(node) >= FLEET_NODE_LEN || node[0] == '-' ||
	    !name_chars(node, "._-")) {
		pr_warn("--node '%s': a node name of 1-%d of A-Z a-z 0-9 . _ -\n", node,
			FLEET_NODE_LEN - 1);
		return -EINVAL;
	}
	return 0;
}

void fleet_key(char *buf, size_t len, const char *prefix, const char *kind, const char *name)
{
	snprintf(buf, len, "%s/%s/%s", prefix, kind, name ? name : "");
}

/* ---- one fleet command: its connection and options ---- */

struct fleet_args {
	struct fleet_conn conn;
	struct etcd e;
	bool opened;
	bool wait, json;
	__u64 timeout_ns;
	__s64 if_gen;
	const char *reason;
};

static void fleet_args_of(const struct bgs_change *ch, struct fleet_args *a);

static int fleet_connect(struct fleet_args *a)
{
	int err = etcd_open(&a->e, &a->conn.eo);

	if (!err)
		a->opened = true;
	return err;
}

static void fleet_done(struct fleet_args *a)
{
	if (a->opened)
		etcd_close(&a->e);
	a->opened = false;
}

static int unreachable(struct fleet_args *a, int err)
{
	if (err == -ENOTCONN)
		pr_warn("etcd is unreachable (%s)\n", a->e.last_error);
	return err;
}

enum {
	DOC_WARN = 1, /* say so when there is none */
	DOC_ANY = 2, /* a document that is not valid too (s: its name and mod_revision only) */
};

/* The service's document; -ENOENT if there is none; -EBADMSG (with a warning) if it is not
 * valid, unless DOC_ANY.
 */
static int doc_read(struct fleet_args *a, const char *name, struct fleet_service *s, int flags)
{
	struct etcd_kv *kvs = NULL;
	char key[256], why[FLEET_WHY_LEN];
	size_t n = 0;
	int err;

	fleet_key(key, sizeof(key), a->conn.prefix, "services", name);
	err = etcd_range(&a->e, key, false, &kvs, &n, NULL);
	if (err)
		return unreachable(a, err);
	if (!n) {
		if (flags & DOC_WARN)
			pr_warn("unknown service '%s' in the fleet (%s)\n", name, a->conn.prefix);
		err = -ENOENT;
		goto out;
	}
	err = fleet_doc_decode(kvs[0].value, kvs[0].vlen, name, s, why, sizeof(why));
	if (err && (flags & DOC_ANY)) {
		memset(s, 0, sizeof(*s));
		snprintf(s->name, sizeof(s->name), "%s", name);
		err = 0;
	} else if (err) {
		pr_warn("%s: the document in etcd (revision %lld) is not valid: %s; the nodes keep "
			"their last applied state (write a valid one, or 'service del --etcd')\n",
			name, (long long)kvs[0].mod_rev, why);
		err = -EBADMSG;
	}
	s->mod_rev = kvs[0].mod_rev;
out:
	etcd_kvs_free(kvs, n);
	return err;
}

static int gen_check(const struct fleet_args *a, const struct fleet_service *s)
{
	if (a->if_gen < 0 || s->generation == a->if_gen)
		return 0;
	pr_warn("%s: fleet generation is %lld, not %lld; someone changed it first "
		"(--if-generation)\n",
		s->name, (long long)s->generation, (long long)a->if_gen);
	return BGS_ERR_GENERATION;
}

/* Connect, read the service's document and check --if-generation against it. */
static int doc_open(struct fleet_args *a, const char *name, struct fleet_service *s)
{
	int err = fleet_connect(a);

	if (!err)
		err = doc_read(a, name, s, DOC_WARN);
	if (!err)
		err = gen_check(a, s);
	return err;
}

/* Write the next document: one transaction on the mod_revision the change was built from. A
 * document the agents would refuse is not written.
 */
static int doc_write(struct fleet_args *a, struct fleet_service *s, __u64 *t_us, __s64 *rev)
{
	char key[256], why[FLEET_WHY_LEN], *doc = NULL;
	bool ok = false;
	int err;

	fleet_key(key, sizeof(key), a->conn.prefix, "services", s->name);
	err = fleet_doc_encode_checked(s, &doc, why, sizeof(why));
	if (err == -EINVAL)
		pr_warn("%s: refusing to write a document the nodes would refuse: %s; nothing "
			"written\n",
			s->name, why);
	if (err)
		return err;
	*t_us = fleet_now_us();
	err = etcd_txn_put(&a->e, key, doc, s->mod_rev, &ok, rev);
	free(doc);
	if (err)
		return unreachable(a, err);
	if (!ok) {
		pr_warn("%s: changed in etcd by someone else since it was read; nothing written "
			"(read it again)\n",
			s->name);
		return s->mod_rev ? BGS_ERR_GENERATION : -EEXIST;
	}
	return 0;
}

/* ---- node reports ---- */

struct node_view {
	char node[FLEET_NODE_LEN];
	bool live; /* a report under its lease */
	bool member;
	bool has_svc;
	bool health_ok;
	char health[16];
	char error[256]; /* the service's or the node's */
	__s64 generation;
	__s32 share;
	char color[8];
	__u64 applied_us;
	__u64 live_flows[BGS_NCOLORS];
	__s64 refused_rev; /* the revision of the document it refused, 0: none */
};

static int node_cmp(const void *x, const void *y)
{
	return strcmp(((const struct node_view *)x)->node, ((const struct node_view *)y)->node);
}

static struct node_view *node_get(struct node_view *v, size_t *n, const char *node)
{
	size_t i;

	for (i = 0; i < *n; i++)
		if (!strcmp(v[i].node, node))
			return &v[i];
	if (*n == MAX_NODES)
		return NULL;
	memset(&v[*n], 0, sizeof(v[*n]));
	snprintf(v[*n].node, sizeof(v[*n].node), "%s", node);
	v[*n].generation = -1;
	v[*n].share = -1;
	return &v[(*n)++];
}

static const char *str_field(json_object *o, const char *f)
{
	json_object *v;

	if (o && json_object_object_get_ex(o, f, &v) && json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return "";
}

static __s64 int_field(json_object *o, const char *f, __s64 dflt)
{
	json_object *v;

	if (o && json_object_object_get_ex(o, f, &v) && !json_object_is_type(v, json_type_null))
		return json_object_get_int64(v);
	return dflt;
}

static void node_fill(struct node_view *nv, json_object *rep, const char *svc)
{
	json_object *svcs, *s = NULL, *live;

	nv->live = true;
	snprintf(nv->health, sizeof(nv->health), "%s", str_field(rep, "health"));
	nv->health_ok = !strcmp(nv->health, "ok");
	snprintf(nv->error, sizeof(nv->error), "%s", str_field(rep, "error"));
	if (json_object_object_get_ex(rep, "services", &svcs))
		json_object_object_get_ex(svcs, svc, &s);
	if (!s)
		return;
	nv->has_svc = true;
	nv->generation = int_field(s, "generation", -1);
	nv->share = int_field(s, "green_share", -1);
	nv->applied_us = int_field(s, "applied_us", 0);
	nv->refused_rev = int_field(s, "refused_revision", 0);
	snprintf(nv->color, sizeof(nv->color), "%s", str_field(s, "color"));
	if (str_field(s, "error")[0])
		snprintf(nv->error, sizeof(nv->error), "%s", str_field(s, "error"));
	if (json_object_object_get_ex(s, "live", &live)) {
		nv->live_flows[BGS_BLUE] = int_field(live, "blue", 0);
		nv->live_flows[BGS_GREEN] = int_field(live, "green", 0);
	}
}

/* Every node the fleet knows (members) and every live report, for service svc. */
static int nodes_read(struct fleet_args *a, const char *svc, struct node_view **out, size_t *n)
{
	struct etcd_kv *kvs = NULL;
	struct node_view *v;
	char key[256];
	size_t i, cnt = 0, plen;
	int err;

	*n = 0;
	v = calloc(MAX_NODES, sizeof(*v));
	if (!v)
		return -ENOMEM;
	fleet_key(key, sizeof(key), a->conn.prefix, "members", NULL);
	plen = strlen(key);
	err = etcd_range(&a->e, key, true, &kvs, &cnt, NULL);
	if (err)
		goto out;
	for (i = 0; i < cnt; i++) {
		struct node_view *nv = node_get(v, n, kvs[i].key + plen);

		if (nv)
			nv->member = true;
	}
	etcd_kvs_free(kvs, cnt);
	kvs = NULL;
	cnt = 0;
	fleet_key(key, sizeof(key), a->conn.prefix, "nodes", NULL);
	plen = strlen(key);
	err = etcd_range(&a->e, key, true, &kvs, &cnt, NULL);
	if (err)
		goto out;
	for (i = 0; i < cnt; i++) {
		json_object *rep = json_tokener_parse(kvs[i].value);
		struct node_view *nv = node_get(v, n, kvs[i].key + plen);

		if (nv && rep)
			node_fill(nv, rep, svc);
		json_object_put(rep);
	}
	qsort(v, *n, sizeof(*v), node_cmp);
out:
	etcd_kvs_free(kvs, cnt);
	if (err) {
		free(v);
		return unreachable(a, err);
	}
	*out = v;
	return 0;
}

/* A live node is done with generation gen of svc (gen < 0: svc deleted). */
static bool node_done(const struct node_view *nv, __s64 gen)
{
	if (gen < 0)
		return !nv->has_svc;
	return nv->has_svc && nv->generation >= gen && !nv->error[0];
}

static int cmp_u64(const void *x, const void *y)
{
	__u64 a = *(const __u64 *)x, b = *(const __u64 *)y;

	return a < b ? -1 : a > b;
}

/* Wait until every live node has applied generation gen of svc (written at t_us). */
static int fleet_wait(struct fleet_args *a, const char *svc, __s64 gen, __u64 t_us)
{
	__u64 t0 = now_ns(), lat[MAX_NODES];
	struct node_view *v = NULL;
	size_t n = 0, i, nlive, ndone;
	char lag[1024];
	int err;

	for (;;) {
		free(v);
		v = NULL;
		err = nodes_read(a, svc, &v, &n);
		if (err)
			return err;
		nlive = ndone = 0;
		lag[0] = '\0';
		for (i = 0; i < n; i++) {
			if (!v[i].live)
				continue;
			if (node_done(&v[i], gen)) {
				lat[ndone++] = v[i].applied_us > t_us ? v[i].applied_us - t_us : 0;
			} else {
				size_t used = strlen(lag);

				snprintf(lag + used, sizeof(lag) - used,
					 "%s%s (generation %lld%s%s)", used ? ", " : "", v[i].node,
					 (long long)v[i].generation, v[i].error[0] ? ": " : "",
					 v[i].error);
			}
			nlive++;
		}
		if (nlive && ndone == nlive)
			break;
		if (now_ns() - t0 >= a->timeout_ns) {
			pr_warn("%s: %zu of %zu live nodes applied generation %lld within %.1fs; "
				"not: %s\n",
				svc, ndone, nlive, (long long)gen, (now_ns() - t0) / 1e9,
				nlive ? lag : "(no live node)");
			err = BGS_ERR_TIMEOUT;
			goto out;
		}
		sleep_until_ns(now_ns() + WAIT_POLL_NS);
	}
	if (gen >= 0) {
		qsort(lat, ndone, sizeof(lat[0]), cmp_u64);
		printf("%s: generation %lld applied by %zu/%zu live nodes; after the write: median "
		       "%.2f ms, max %.2f ms\n",
		       svc, (long long)gen, ndone, nlive, lat[ndone / 2] / 1e3,
		       lat[ndone - 1] / 1e3);
	} else {
		printf("%s: deleted by %zu/%zu live nodes\n", svc, ndone, nlive);
	}
	for (i = 0; i < n; i++)
		if (!v[i].live && v[i].member)
			printf("%s: node %s is missing (no live report)\n", svc, v[i].node);
out:
	free(v);
	return err;
}

/* After a write: the line that says what was written, then --wait. */
static int fleet_after(struct fleet_args *a, const char *svc, __s64 gen, __u64 t_us, __s64 rev)
{
	printf("%s: generation %lld written to etcd at revision %lld\n", svc, (long long)gen,
	       (long long)rev);
	fflush(stdout);
	if (!a->wait)
		return 0;
	return fleet_wait(a, svc, gen, t_us);
}

/* ---- flip and rollback ---- */

/* "blue", "green" or "green 12.5%" */
static const char *share_name(__s32 share, char *buf, size_t len)
{
	char pct[16];

	if (share_color(share) != BGS_COLOR_NONE)
		snprintf(buf, len, "%s", share_label(share));
	else
		snprintf(buf, len, "green %s", fmt_share(share, pct, sizeof(pct)));
	return buf;
}

static int share_set(struct fleet_args *a, struct fleet_service *s, __s32 share)
{
	char from[24], to_s[24];
	__u64 t_us;
	__s64 rev = 0;
	__u8 gain = share > s->green_share ? BGS_GREEN : BGS_BLUE;
	__u32 i;
	bool weighted = false;
	int err;

	share_name(s->green_share, from, sizeof(from));
	share_name(share, to_s, sizeof(to_s));
	if (s->green_share == share) {
		printf("%s: already %s (fleet generation %lld)\n", s->name, to_s,
		       (long long)s->generation);
		if (a->wait)
			return fleet_wait(a, s->name, s->generation, fleet_now_us());
		return 0;
	}
	for (i = 0; i < s->nbe[gain]; i++)
		weighted |= s->be[gain][i].weight > 0;
	if (!weighted) {
		pr_warn("%s of '%s' has no backends%s; refusing to send new flows there\n",
			color_name(gain), s->name, s->nbe[gain] ? " of weight above 0" : "");
		return -ENOENT;
	}
	s->previous_share = s->green_share;
	s->green_share = share;
	s->generation++;
	err = doc_write(a, s, &t_us, &rev);
	if (err)
		return err;
	printf("%s: %s -> %s in the fleet\n", s->name, from, to_s);
	return fleet_after(a, s->name, s->generation, t_us, rev);
}

int fleet_switch(const struct bgs_change *ch)
{
	struct fleet_service *s = calloc(1, sizeof(*s));
	struct fleet_args a;
	__u32 share;
	int err;

	if (!s)
		return -ENOMEM;
	fleet_args_of(ch, &a);
	err = doc_open(&a, ch->service, s);
	if (!err)
		err = bgs_change_share(ch, s->name, s->green_share, s->previous_share >= 0,
				       s->previous_share, " in the fleet", false, &share);
	if (!err)
		err = share_set(&a, s, share);
	fleet_done(&a);
	free(s);
	return err > 0 ? 0 : err;
}

/* ---- service and backend ---- */

/* The fleet_args of a parsed change: its connection, --wait and --if-generation. */
static void fleet_args_of(const struct bgs_change *ch, struct fleet_args *a)
{
	memset(a, 0, sizeof(*a));
	a->conn = ch->conn;
	a->wait = ch->wait;
	a->timeout_ns = ch->timeout_ns;
	a->if_gen = ch->if_generation;
	a->reason = ch->reason;
}

static int fleet_service_add(struct fleet_args *a, const struct bgs_change *ch,
			     struct fleet_service *s)
{
	const struct bgs_service_spec *sp = &ch->svc;
	__u64 t_us;
	__s64 rev = 0;
	int err;

	err = fleet_connect(a);
	if (err)
		return err;
	err = doc_read(a, sp->name, s, DOC_ANY);
	if (!err) {
		pr_warn("service '%s' already exists in the fleet\n", sp->name);
		return -EEXIST;
	}
	if (err != -ENOENT)
		return err;
	memset(s, 0, sizeof(*s));
	snprintf(s->name, sizeof(s->name), "%s", sp->name);
	snprintf(s->vip, sizeof(s->vip), "%s", ch->addr_text);
	s->proto = sp->proto;
	s->lb = sp->lb;
	s->table_size = sp->lb == BGS_LB_MODULO ? 0 : sp->table_size;
	s->vip_flags = sp->vip_flags;
	s->generation = 1;
	s->previous_share = -1;
	err = doc_write(a, s, &t_us, &rev);
	if (err)
		return err;
	printf("service %s: %s/%s, active blue, in the fleet\n", s->name, s->vip,
	       proto_name(s->proto));
	return fleet_after(a, s->name, s->generation, t_us, rev);
}

static int fleet_service_del(struct fleet_args *a, const struct bgs_change *ch,
			     struct fleet_service *s)
{
	const char *name = ch->name ? ch->name : ch->service; /* a key longer than a name too */
	struct node_view *v = NULL;
	char key[256];
	size_t n = 0, i;
	__u64 live = 0, t_us;
	__s64 rev = 0;
	bool ok = false;
	int err;

	/* a document that is not valid can be deleted: one way out of it */
	err = fleet_connect(a);
	if (!err)
		err = doc_read(a, name, s, DOC_WARN | DOC_ANY);
	if (!err)
		err = gen_check(a, s);
	if (!err)
		err = nodes_read(a, name, &v, &n);
	if (err)
		return err;
	for (i = 0; i < n; i++)
		if (v[i].live && v[i].has_svc)
			live += v[i].live_flows[BGS_BLUE] + v[i].live_flows[BGS_GREEN];
	free(v);
	if (live && !ch->svc.force) {
		pr_warn("service '%s' has %llu live flows on the nodes; --force deletes it and cuts "
			"them\n",
			s->name, (unsigned long long)live);
		return -EBUSY;
	}
	fleet_key(key, sizeof(key), a->conn.prefix, "services", name);
	t_us = fleet_now_us();
	err = etcd_txn_delete(&a->e, key, s->mod_rev, &ok, &rev);
	if (err)
		return unreachable(a, err);
	if (!ok) {
		pr_warn("%s: changed in etcd by someone else since it was read; nothing deleted\n",
			name);
		return BGS_ERR_GENERATION;
	}
	printf("service %s deleted from the fleet (etcd revision %lld)\n", name, (long long)rev);
	fflush(stdout);
	return a->wait ? fleet_wait(a, name, -1, t_us) : 0;
}

static int fleet_service_list(struct fleet_args *a)
{
	struct fleet_service *s = calloc(1, sizeof(*s));
	struct etcd_kv *kvs = NULL;
	char key[256];
	size_t n = 0, i;
	int err;

	if (!s)
		return -ENOMEM;
	err = fleet_connect(a);
	if (err)
		goto out;
	fleet_key(key, sizeof(key), a->conn.prefix, "services", NULL);
	err = etcd_range(&a->e, key, true, &kvs, &n, NULL);
	if (err) {
		unreachable(a, err);
		goto out;
	}
	if (!n)
		printf("no services\n");
	else
		printf("%-20s %-24s %-5s %-6s %10s %5s %5s\n", "NAME", "VIP", "PROTO", "ACTIVE",
		       "GENERATION", "BLUE", "GREEN");
	for (i = 0; i < n; i++) {
		const char *name = kvs[i].key + strlen(key);
		char why[FLEET_WHY_LEN];

		if (fleet_doc_decode(kvs[i].value, kvs[i].vlen, name, s, why, sizeof(why))) {
			printf("%-20.40s (the document at revision %lld is not valid: %s)\n", name,
			       (long long)kvs[i].mod_rev, why);
			continue;
		}
		printf("%-20s %-24s %-5s %-6s %10lld %5u %5u\n", s->name, s->vip,
		       proto_name(s->proto),
		       s->green_share == FLEET_SHARE_MAX ? "green" :
		       s->green_share			 ? "split" :
							   "blue",
		       (long long)s->generation, s->nbe[BGS_BLUE], s->nbe[BGS_GREEN]);
	}
out:
	etcd_kvs_free(kvs, n);
	free(s);
	return err;
}

/* The fleet form of service add, del and list: ch parsed, written as a document. */
int fleet_service(const struct bgs_change *ch)
{
	struct fleet_service *s = calloc(1, sizeof(*s));
	struct fleet_args a;
	int err = 0;

	if (!s)
		return -ENOMEM;
	fleet_args_of(ch, &a);
	if (ch->kind == BGS_CH_SERVICE_ADD)
		err = fleet_service_add(&a, ch, s);
	else if (ch->kind == BGS_CH_SERVICE_DEL)
		err = fleet_service_del(&a, ch, s);
	else
		err = fleet_service_list(&a);
	fleet_done(&a);
	free(s);
	return err > 0 ? 0 : err;
}

/* The backend's place in the document: *pos its index in its color, or -1. A backend there
 * already is refused unless it is an add of a new weight.
 */
static int fleet_backend_find(const struct bgs_change *ch, const struct fleet_service *s, int *pos)
{
	const struct bgs_backend_spec *be = &ch->be;
	bool add = ch->kind == BGS_CH_BACKEND_ADD;
	struct bgs_endpoint other;
	__u32 i, c;

	*pos = -1;
	for (c = 0; c < BGS_NCOLORS; c++) {
		for (i = 0; i < s->nbe[c]; i++) {
			if (parse_endpoint(s->be[c][i].addr, &other) ||
			    memcmp(other.addr, be->ep.addr, sizeof(be->ep.addr)) ||
			    other.port != be->ep.port)
				continue;
			if (add && (c != be->color || be->weight < 0 ||
				    s->be[c][i].weight == (__u32)be->weight)) {
				pr_warn("%s is already a %s backend of '%s'\n", ch->addr_text,
					color_name(c), s->name);
				return -EEXIST;
			}
			if (c == be->color)
				*pos = i;
		}
	}
	if (add && be->weight >= 0 && be->weight != 1 && s->lb == BGS_LB_MODULO) {
		pr_warn("--weight: '%s' spreads flows by modulo (--lb modulo), without weights\n",
			s->name);
		return -EINVAL;
	}
	return 0;
}

/* The document with the backend added, reweighed or removed. */
static int fleet_backend_edit(const struct bgs_change *ch, struct fleet_service *s, int pos)
{
	__u8 color = ch->be.color;
	int weight = ch->be.weight;

	if (ch->kind == BGS_CH_BACKEND_ADD && pos >= 0) {
		s->be[color][pos].weight = weight; /* a new weight for a backend there */
	} else if (ch->kind == BGS_CH_BACKEND_ADD) {
		if (s->nbe[color] >= BGS_MAX_BACKENDS) {
			pr_warn("%s of '%s' is full\n", color_name(color), s->name);
			return -ENOSPC;
		}
		snprintf(s->be[color][s->nbe[color]].addr, BGS_ADDRSTR_LEN, "%s", ch->addr_text);
		s->be[color][s->nbe[color]++].weight = weight < 0 ? 1 : weight;
	} else {
		if (pos < 0) {
			pr_warn("%s is not a %s backend of '%s'\n", ch->addr_text,
				color_name(color), s->name);
			return -ENOENT;
		}
		s->be[color][pos] = s->be[color][--s->nbe[color]];
	}
	s->generation++;
	return 0;
}

/* The fleet form of backend add and del: ch parsed, written as the service's next document. */
int fleet_backend(const struct bgs_change *ch)
{
	struct fleet_service *s = calloc(1, sizeof(*s));
	bool add = ch->kind == BGS_CH_BACKEND_ADD;
	struct fleet_args a;
	__u64 t_us;
	__s64 rev = 0;
	int err, pos = -1;

	if (!s)
		return -ENOMEM;
	fleet_args_of(ch, &a);
	err = doc_open(&a, ch->name ? ch->name : ch->service, s);
	if (!err && add)
		err = check_backend_of(ch->addr_text, &ch->be.ep, &s->vip_ep, s->name);
	if (!err)
		err = fleet_backend_find(ch, s, &pos);
	if (!err)
		err = fleet_backend_edit(ch, s, pos);
	if (!err)
		err = doc_write(&a, s, &t_us, &rev);
	if (err)
		goto out;
	printf("%s: %s backend %s %s in the fleet\n", s->name, color_name(ch->be.color),
	       ch->addr_text,
	       add && pos >= 0 ? "reweighed" :
	       add	       ? "added" :
				 "removed (its flows drain)");
	err = fleet_after(&a, s->name, s->generation, t_us, rev);
out:
	fleet_done(&a);
	free(s);
	return err > 0 ? 0 : err;
}

/* ---- status ---- */

/* One service as status shows it: its document, or why its document is not valid. */
struct doc_view {
	const char *name; /* from its key */
	const struct fleet_service *s; /* valid: the document */
	const char *why; /* not valid: why (s unused) */
	__s64 rev; /* the document's mod_revision */
};

static const char *node_state(const struct node_view *nv, const struct doc_view *d)
{
	if (!nv->live)
		return "missing";
	if (d->why)
		return nv->refused_rev == d->rev ? "refused" : "lagging";
	if (nv->error[0] && !node_done(nv, d->s->generation))
		return "error";
	return node_done(nv, d->s->generation) ? "ok" : "lagging";
}

/* "4 nodes: 2 ok, lagging: n1, missing: n3": the line a reader wants first. */
static void status_summary(const struct node_view *v, size_t n, const struct doc_view *d)
{
	static const char *const kinds[] = { "lagging", "error", "refused", "missing" };
	size_t i, k, ok = 0;

	for (i = 0; i < n; i++)
		ok += !strcmp(node_state(&v[i], d), "ok");
	printf("  %zu nodes: %zu ok", n, ok);
	for (k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		bool any = false;

		for (i = 0; i < n; i++) {
			if (strcmp(node_state(&v[i], d), kinds[k]))
				continue;
			if (any)
				printf(" %s", v[i].node);
			else
				printf(", %s: %s", kinds[k], v[i].node);
			any = true;
		}
	}
	printf("\n");
}

static json_object *status_node_json(const struct node_view *nv, const char *st)
{
	json_object *nd = json_object_new_object(), *live = json_object_new_object();

	json_object_object_add(nd, "node", json_object_new_string(nv->node));
	json_object_object_add(nd, "state", json_object_new_string(st));
	json_object_object_add(nd, "generation",
			       nv->has_svc ? json_object_new_int64(nv->generation) : NULL);
	json_object_object_add(nd, "color", nv->has_svc ? json_object_new_string(nv->color) : NULL);
	json_object_object_add(live, "blue", json_object_new_int64(nv->live_flows[BGS_BLUE]));
	json_object_object_add(live, "green", json_object_new_int64(nv->live_flows[BGS_GREEN]));
	json_object_object_add(nd, "live_flows", live);
	json_object_object_add(nd, "health",
			       json_object_new_string(nv->live ? nv->health : "missing"));
	json_object_object_add(nd, "error", json_object_new_string(nv->error));
	json_object_object_add(nd, "refused_revision", json_object_new_int64(nv->refused_rev));
	return nd;
}

static void status_json(const struct doc_view *d, const struct node_view *v, size_t n, bool first)
{
	json_object *o = json_object_new_object(), *nodes = json_object_new_array();
	json_object *lag = json_object_new_array(), *miss = json_object_new_array();
	const struct fleet_service *s = d->s;
	size_t i;

	json_object_object_add(o, "name", json_object_new_string(d->name));
	json_object_object_add(o, "valid", json_object_new_boolean(!d->why));
	json_object_object_add(o, "revision", json_object_new_int64(d->rev));
	json_object_object_add(o, "document_error", json_object_new_string(d->why ? d->why : ""));
	if (!d->why) {
		json_object_object_add(o, "vip", json_object_new_string(s->vip));
		json_object_object_add(o, "generation", json_object_new_int64(s->generation));
		json_object_object_add(o, "green_share",
				       json_object_new_double(s->green_share / 100.0));
		json_object_object_add(o, "color",
				       json_object_new_string(share_label(s->green_share)));
	}
	for (i = 0; i < n; i++) {
		const char *st = node_state(&v[i], d);

		json_object_array_add(nodes, status_node_json(&v[i], st));
		if (!strcmp(st, "missing"))
			json_object_array_add(miss, json_object_new_string(v[i].node));
		else if (strcmp(st, "ok"))
			json_object_array_add(lag, json_object_new_string(v[i].node));
	}
	json_object_object_add(o, "nodes", nodes);
	json_object_object_add(o, "lagging", lag);
	json_object_object_add(o, "missing", miss);
	printf("%s%s", first ? "" : ",", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
}

static void status_one(struct fleet_args *a, const struct doc_view *d, const struct node_view *v,
		       size_t n, bool first)
{
	const struct fleet_service *s = d->s;
	size_t i;

	if (a->json) {
		status_json(d, v, n, first);
		return;
	}
	if (d->why)
		printf("%s%s: the document at etcd revision %lld is not valid: %s\n"
		       "  the nodes keep their last applied state\n",
		       first ? "" : "\n", d->name, (long long)d->rev, d->why);
	else
		printf("%s%s %s/%s: fleet generation %lld, %s (green share %d.%02d%%)\n",
		       first ? "" : "\n", s->name, s->vip, proto_name(s->proto),
		       (long long)s->generation, share_label(s->green_share), s->green_share / 100,
		       s->green_share % 100);
	printf("  %-20s %-8s %10s %-6s %10s %10s  %s\n", "NODE", "STATE", "GENERATION", "COLOR",
	       "LIVE_BLUE", "LIVE_GREEN", "ERROR");
	for (i = 0; i < n; i++) {
		char gen[24] = "-";

		if (v[i].has_svc)
			snprintf(gen, sizeof(gen), "%lld", (long long)v[i].generation);
		printf("  %-20s %-8s %10s %-6s %10llu %10llu  %s\n", v[i].node,
		       node_state(&v[i], d), gen, v[i].has_svc ? v[i].color : "-",
		       (unsigned long long)v[i].live_flows[BGS_BLUE],
		       (unsigned long long)v[i].live_flows[BGS_GREEN], v[i].error);
	}
	if (!n) {
		printf("  (no node has reported)\n");
		return;
	}
	status_summary(v, n, d);
}

/* The documents at the key of name (NULL: every service), after --wait for name's. */
static int status_read(struct fleet_args *a, const char *name, struct fleet_service *s,
		       struct etcd_kv **kvs, size_t *nkv)
{
	char key[256];
	int err;

	err = fleet_connect(a);
	if (!err && name && a->wait) {
		err = doc_read(a, name, s, DOC_WARN);
		if (!err)
			err = fleet_wait(a, s->name, s->generation, fleet_now_us());
	}
	if (err)
		return err;
	fleet_key(key, sizeof(key), a->conn.prefix, "services", name);
	err = etcd_range(&a->e, key, !name, kvs, nkv, NULL);
	if (err)
		return unreachable(a, err);
	if (name && !*nkv) {
		pr_warn("unknown service '%s' in the fleet (%s)\n", name, a->conn.prefix);
		return -ENOENT;
	}
	return 0;
}

int fleet_status(const struct fleet_conn *conn, const char *name, bool json, bool wait,
		 __u64 timeout_ns)
{
	struct fleet_service *s = calloc(1, sizeof(*s));
	struct etcd_kv *kvs = NULL;
	struct node_view *v = NULL;
	struct fleet_args a;
	size_t n = 0, nkv = 0, i, shown = 0, plen;
	char key[256];
	int err;

	if (!s)
		return -ENOMEM;
	memset(&a, 0, sizeof(a));
	a.conn = *conn;
	a.json = json;
	a.wait = wait;
	a.timeout_ns = timeout_ns;
	a.if_gen = -1;
	err = status_read(&a, name, s, &kvs, &nkv);
	if (err)
		goto out;
	fleet_key(key, sizeof(key), a.conn.prefix, "services", NULL);
	plen = strlen(key);
	if (a.json)
		printf("{\"services\":[");
	for (i = 0; i < nkv; i++) {
		char why[FLEET_WHY_LEN];
		struct doc_view d = { .name = kvs[i].key + plen, .s = s, .rev = kvs[i].mod_rev };

		if (fleet_doc_decode(kvs[i].value, kvs[i].vlen, d.name, s, why, sizeof(why)))
			d.why = why;
		free(v);
		v = NULL;
		err = nodes_read(&a, d.name, &v, &n);
		if (err)
			goto out;
		status_one(&a, &d, v, n, !shown++);
	}
	if (a.json)
		printf("]}\n");
	else if (!shown)
		printf("no services in the fleet\n");
out:
	etcd_kvs_free(kvs, nkv);
	free(v);
	fleet_done(&a);
	free(s);
	return err > 0 ? 0 : err;
}
