// SPDX-License-Identifier: GPL-2.0
/* status.c: `status`: services, colors, backends, live flows, rates and counters, text or JSON. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>
#include <json-c/json.h>

#include "commands.h"
#include "fleet.h"
#include "log.h"
#include "specs.h"
#include "snapshot.h"
#include "state.h"
#include "util.h"

#define DEFAULT_INTERVAL_MS 250

struct status_ctx {
	struct bgs_state st;
	struct bgs_snapshot prev, cur;
	bool json, rates;
	double secs; /* between the two snapshots, when rates */
};

struct status_args {
	struct fleet_conn conn; /* the fleet form */
	bool json, wait;
	__u32 interval;
	__u64 timeout_ns;
};

static const struct bgs_pos status_pos[] = {
	{ .name = "NAME", .complete = "service", .optional = true },
	BGS_POS_END,
};

static const struct bgs_opt status_opts[] = {
	{ .name = "json",
	  .short_name = 'j',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct status_args, json),
	  .help = "machine-readable output (schema in README.md)",
	  .where = BGS_OPT_BOTH },
	{ .name = "interval",
	  .short_name = 'i',
	  .type = BGS_OPT_U32,
	  .off = offsetof(struct status_args, interval),
	  .metavar = "MS",
	  .help = "sample counters twice, MS apart, for rates (default 250, and 0 with --json; 0: "
		  "no rates, no wait)",
	  .max = 60000 },
	BGS_OPTS_FLEET_CONN(struct status_args, conn, BGS_OPT_FLEET),
	{ .name = "wait",
	  .short_name = 'W',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct status_args, wait),
	  .help = "wait until every live node has applied the documents",
	  .where = BGS_OPT_FLEET },
	{ .name = "timeout",
	  .short_name = 't',
	  .type = BGS_OPT_DURATION,
	  .off = offsetof(struct status_args, timeout_ns),
	  .metavar = "D",
	  .help = "how long --wait waits (default 30s)",
	  .max = 24 * 3600 * 1000000000ULL,
	  .where = BGS_OPT_FLEET },
	BGS_OPT_END,
};

_Static_assert(DEFAULT_INTERVAL_MS == 250, "status' help text");

const struct bgs_cmd_spec bgs_spec_status = {
	.name = "status",
	.summary = "show the services, their backends, flows and counters",
	.description = "Show each service (or NAME): its VIP, active color and generation, the "
		       "backends of both colors with their live flows, counters and rates, how "
		       "many flows still drain to the inactive color, and the node's counters.\n\n"
		       "With --etcd: the fleet's documents and what every node reports having "
		       "applied.",
	.pos = status_pos,
	.opts = status_opts,
};

static double rate(const struct status_ctx *c, __u64 now, __u64 before)
{
	return c->rates && c->secs > 0 && now >= before ? (now - before) / c->secs : 0;
}

/* --- JSON, built with json-c: every string escaped, whatever a name holds ------------------ */

static void put(json_object *o, const char *key, json_object *v)
{
	json_object_object_add(o, key, v);
}

static void put_u64(json_object *o, const char *key, __u64 v)
{
	put(o, key, json_object_new_uint64(v));
}

/* A string of at most len bytes of s: a name field need not be NUL-terminated. */
static void put_str(json_object *o, const char *key, const char *s, size_t len)
{
	put(o, key, json_object_new_string_len(s, strnlen(s, len)));
}

/* A number written with printf's fmt (as "%.2f"): 33.33 rather than 33.329999999999998. */
static void put_fixed(json_object *o, const char *key, const char *fmt, double v)
{
	char buf[32];

	snprintf(buf, sizeof(buf), fmt, v);
	put(o, key, json_object_new_double_s(v, buf));
}

/* A rate per second, or null without rates (--json reads at once unless given --interval). */
static void put_rate(json_object *o, const char *key, const struct status_ctx *c, __u64 now,
		     __u64 before)
{
	if (c->rates)
		put_fixed(o, key, "%.1f", rate(c, now, before));
	else
		put(o, key, NULL);
}

static json_object *backend_json(const struct status_ctx *c, const struct bgs_service_view *sv,
				 const struct bgs_backend_view *bv)
{
	const struct bgs_backend_view *pv = snapshot_backend(&c->prev, sv->svc, bv->slot);
	struct bgs_backend_stats z = { 0 };
	const struct bgs_backend_stats *p = pv ? &pv->st : &z, *s = &bv->st;
	json_object *o = json_object_new_object();
	char abuf[BGS_ADDRSTR_LEN];

	put_str(o, "address", fmt_addr(bv->be.addr, bv->be.family, abuf, sizeof(abuf)),
		sizeof(abuf));
	put_u64(o, "port", ntohs(bv->be.port));
	put_u64(o, "slot", bv->slot);
	put_str(o, "state", backend_state_name(bv->be.state), BGS_NAME_LEN);
	put_u64(o, "weight", bv->be.weight);
	put_u64(o, "table_positions", bv->positions);
	put_u64(o, "live_flows", bv->live);
	put_u64(o, "local_flows", bv->local);
	put_u64(o, "rx_packets", s->rx_packets);
	put_u64(o, "rx_bytes", s->rx_bytes);
	put_u64(o, "tx_packets", s->tx_packets);
	put_u64(o, "tx_bytes", s->tx_bytes);
	put_u64(o, "new_flows", s->new_flows);
	put_u64(o, "local_new_flows", bv->local_opened);
	put_u64(o, "resets", s->resets);
	put_rate(o, "rx_pps", c, s->rx_packets, p->rx_packets);
	put_rate(o, "tx_pps", c, s->tx_packets, p->tx_packets);
	put_rate(o, "new_flows_per_s", c, s->new_flows, p->new_flows);
	return o;
}

/* colors: {"blue": {backends, live_flows, local_flows, share}, "green": {...}} */
static json_object *colors_json(const struct status_ctx *c, const struct bgs_service_view *sv)
{
	json_object *o = json_object_new_object(), *co, *bes;
	__u32 share;
	size_t i;
	__u8 col;

	for (col = 0; col < BGS_NCOLORS; col++) {
		const struct bgs_color_view *cv = &sv->color[col];

		co = json_object_new_object();
		bes = json_object_new_array();
		for (i = 0; i < cv->nbackends; i++)
			json_object_array_add(bes, backend_json(c, sv, &cv->backends[i]));
		put(co, "backends", bes);
		put_u64(co, "live_flows", cv->live);
		put_u64(co, "local_flows", cv->local);
		share = col == BGS_GREEN ? sv->sw.share : BGS_SHARE_ALL - sv->sw.share;
		put_fixed(co, "share", "%.2f", share / 100.0);
		put(o, color_name(col), co);
	}
	return o;
}

static json_object *service_json(const struct status_ctx *c, const struct bgs_service_view *sv)
{
	const struct bgs_switch *sw = &sv->sw;
	json_object *o = json_object_new_object(), *drops = json_object_new_object();
	bool prev = sw->flags & BGS_SW_HAS_PREV;
	char abuf[BGS_ADDRSTR_LEN];
	size_t i;

	put_str(o, "name", sv->rec.name, sizeof(sv->rec.name));
	put_u64(o, "id", sv->svc);
	put_str(o, "vip", fmt_addr(sv->rec.vip.addr, sv->rec.vip.family, abuf, sizeof(abuf)),
		sizeof(abuf));
	put_u64(o, "port", ntohs(sv->rec.vip.port));
	put(o, "proto", json_object_new_string(proto_name(sv->rec.vip.proto)));
	put(o, "active", json_object_new_string(share_label(sw->share)));
	put(o, "previous", prev ? json_object_new_string(share_label(sw->prev_share)) : NULL);
	if (prev)
		put_fixed(o, "previous_green_share", "%.2f", sw->prev_share / 100.0);
	else
		put(o, "previous_green_share", NULL);
	put_fixed(o, "green_share", "%.2f", sw->share / 100.0);
	put(o, "lb", json_object_new_string(sv->rec.lb == BGS_LB_MODULO ? "modulo" : "maglev"));
	put_u64(o, "table_size", sv->rec.table_size);
	put(o, "split_by",
	    json_object_new_string(sv->rec.vip_flags & BGS_VIP_SPLIT_CLIENT ? "client" : "flow"));
	put_u64(o, "generation", sw->generation);
	put(o, "draining", json_object_new_boolean(sw->flags & BGS_SW_DRAINING));
	put_u64(o, "syn_miss", sv->st.syn_miss);
	put_u64(o, "nosyn_miss", sv->st.nosyn_miss);
	put_u64(o, "second_chance", sv->st.second_chance);
	put_u64(o, "reopen", sv->st.reopen);
	for (i = 0; i < BGS_DROP_MAX; i++)
		put_u64(drops, bgs_drop_names[i], sv->st.drops[i]);
	put(o, "drops", drops);
	put(o, "colors", colors_json(c, sv));
	return o;
}

/* interfaces: [{name, ifindex, mode}] of this pinned state */
static json_object *ifaces_json(const struct status_ctx *c)
{
	json_object *a = json_object_new_array(), *o;
	struct bgs_iface rec;
	__u32 key, next;
	int err;

	for (err = bpf_map_get_next_key(c->st.fd[BGS_M_IFACES], NULL, &key); !err;
	     err = bpf_map_get_next_key(c->st.fd[BGS_M_IFACES], &key, &next), key = next) {
		if (bpf_map_lookup_elem(c->st.fd[BGS_M_IFACES], &key, &rec))
			continue;
		o = json_object_new_object();
		put_str(o, "name", rec.name, sizeof(rec.name));
		put_u64(o, "ifindex", key);
		put(o, "mode",
		    json_object_new_string(rec.xdp_flags & XDP_FLAGS_SKB_MODE ? "generic" :
										"native"));
		json_object_array_add(a, o);
	}
	return a;
}

static json_object *flow_table_json(const struct status_ctx *c)
{
	json_object *o = json_object_new_object();

	put_u64(o, "capacity", c->st.cfg.flow_entries);
	put_u64(o, "entries", c->cur.flow_entries);
	put_u64(o, "live", c->cur.live_total);
	put_u64(o, "local", c->cur.local_total);
	put_u64(o, "evicted", c->cur.evicted);
	return o;
}

/* The whole document; the schema is in README.md. NULL if json-c is out of memory. */
static json_object *status_json(const struct status_ctx *c)
{
	json_object *o = json_object_new_object(), *t = json_object_new_object(), *a, *n;
	size_t i;

	if (!o || !t) {
		json_object_put(o);
		json_object_put(t);
		return NULL;
	}
	put_u64(o, "layout_version", c->st.cfg.layout_version);
	put_str(o, "pin_root", bgs_pin_root, PATH_MAX);
	put(o, "interfaces", ifaces_json(c));
	put(o, "flow_table", flow_table_json(c));
	put_u64(t, "tcp_idle_s", c->st.cfg.tcp_idle_ns / 1000000000ULL);
	put_u64(t, "udp_idle_s", c->st.cfg.udp_idle_ns / 1000000000ULL);
	put(o, "timeouts", t);
	put_fixed(o, "interval_ms", "%.0f", c->rates ? c->secs * 1000 : 0);
	a = json_object_new_array();
	for (i = 0; i < c->cur.nsvcs; i++)
		json_object_array_add(a, service_json(c, &c->cur.svcs[i]));
	put(o, "services", a);
	n = json_object_new_object();
	for (i = 0; i < BGS_STAT_MAX; i++)
		put_u64(n, bgs_stat_names[i], c->cur.stats[i]);
	put(o, "counters", n);
	n = json_object_new_object();
	for (i = 0; i < BGS_DROP_MAX; i++)
		put_u64(n, bgs_drop_names[i], c->cur.drops[i]);
	put(o, "drops", n);
	return o;
}

static int print_json(const struct status_ctx *c)
{
	json_object *o = status_json(c);
	const char *txt;

	txt = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
							    JSON_C_TO_STRING_NOSLASHESCAPE) :
		  NULL;
	if (txt)
		printf("%s\n", txt);
	json_object_put(o);
	return txt ? 0 : -ENOMEM;
}

/* --- text ------------------------------------------------------------------------------------ */

static void print_backend(struct status_ctx *c, const struct bgs_service_view *sv, __u8 color,
			  const struct bgs_backend_view *bv)
{
	const struct bgs_backend_view *pv = snapshot_backend(&c->prev, sv->svc, bv->slot);
	struct bgs_backend_stats z = { 0 };
	const struct bgs_backend_stats *p = pv ? &pv->st : &z, *s = &bv->st;
	char ebuf[BGS_ADDRSTR_LEN], pct[16];

	fmt_endpoint(bv->be.addr, bv->be.port, bv->be.family, ebuf, sizeof(ebuf));
	if (sv->rec.lb == BGS_LB_MODULO)
		snprintf(pct, sizeof(pct), "-");
	else
		snprintf(pct, sizeof(pct), "%.2f%%",
			 sv->color[color].table_size ?
				 100.0 * bv->positions / sv->color[color].table_size :
				 0.0);
	printf("  %-6s %-24s %-8s %6u %7s %7u %10llu %10llu %10llu %7llu", color_name(color), ebuf,
	       backend_state_name(bv->be.state), bv->be.weight, pct, bv->live,
	       (unsigned long long)s->new_flows, (unsigned long long)s->rx_packets,
	       (unsigned long long)s->tx_packets, (unsigned long long)s->resets);
	if (c->rates)
		printf(" %8.1f %9.1f", rate(c, s->new_flows, p->new_flows),
		       rate(c, s->rx_packets, p->rx_packets));
	printf("\n");
}

/* The service's first line: name, VIP, active color, generation, lookup, split. */
static void print_service_head(const struct bgs_service_view *sv, bool first)
{
	const struct bgs_switch *sw = &sv->sw;
	char ebuf[BGS_ADDRSTR_LEN], pct[16];

	printf("%s%s  %s/%s  active %s", first ? "" : "\n", sv->rec.name,
	       fmt_endpoint(sv->rec.vip.addr, sv->rec.vip.port, sv->rec.vip.family, ebuf,
			    sizeof(ebuf)),
	       proto_name(sv->rec.vip.proto), share_label(sw->share));
	if (share_color(sw->share) == BGS_COLOR_NONE)
		printf(" (green %s)", fmt_share(sw->share, pct, sizeof(pct)));
	printf("  generation %u", sw->generation);
	if (sw->flags & BGS_SW_HAS_PREV)
		printf("  (was %s)", share_label(sw->prev_share));
	if (sv->rec.lb == BGS_LB_MODULO)
		printf("  lb modulo");
	else
		printf("  maglev %u", sv->rec.table_size);
	if (sv->rec.vip_flags & BGS_VIP_SPLIT_CLIENT)
		printf("  split by client");
	printf("\n");
}

/* The service's last line: live flows of each color, local sockets, misses. */
static void print_service_flows(const struct bgs_service_view *sv)
{
	__u8 act = share_color(sv->sw.share) == BGS_GREEN ? BGS_GREEN : BGS_BLUE;

	printf("  live flows: %s %llu, %s %llu", color_name(act),
	       (unsigned long long)sv->color[act].live, color_name(!act),
	       (unsigned long long)sv->color[!act].live);
	if (share_color(sv->sw.share) != BGS_COLOR_NONE && sv->color[!act].live)
		printf(" (draining)");
	if (sv->color[act].local || sv->color[!act].local)
		printf(", local sockets among them: %s %llu, %s %llu", color_name(act),
		       (unsigned long long)sv->color[act].local, color_name(!act),
		       (unsigned long long)sv->color[!act].local);
	printf("; misses: syn %llu, non-syn %llu (%llu second chances)\n",
	       (unsigned long long)sv->st.syn_miss, (unsigned long long)sv->st.nosyn_miss,
	       (unsigned long long)sv->st.second_chance);
}

static void print_service(struct status_ctx *c, const struct bgs_service_view *sv, bool first)
{
	size_t i;
	__u8 col;

	print_service_head(sv, first);
	printf("  %-6s %-24s %-8s %6s %7s %7s %10s %10s %10s %7s", "COLOR", "BACKEND", "STATE",
	       "WEIGHT", "TABLE", "LIVE", "NEW_FLOWS", "RX_PKTS", "TX_PKTS", "RESETS");
	if (c->rates)
		printf(" %8s %9s", "FLOWS/S", "RX_PPS");
	printf("\n");
	for (col = 0; col < BGS_NCOLORS; col++) {
		const struct bgs_color_view *cv = &sv->color[col];

		for (i = 0; i < cv->nbackends; i++)
			print_backend(c, sv, col, &cv->backends[i]);
		if (!cv->nbackends)
			printf("  %-6s (no backends)\n", color_name(col));
	}
	print_service_flows(sv);
}

static void print_counters(struct status_ctx *c)
{
	int i;

	printf("\ncounters:");
	for (i = 0; i < BGS_STAT_MAX; i++)
		printf(" %s=%llu", bgs_stat_names[i], (unsigned long long)c->cur.stats[i]);
	printf("\ndrops:");
	for (i = 0; i < BGS_DROP_MAX; i++)
		printf(" %s=%llu", bgs_drop_names[i], (unsigned long long)c->cur.drops[i]);
	printf("\n");
}

static void print_header(struct status_ctx *c)
{
	__u32 key, next, n = 0;
	struct bgs_iface rec;
	int err;

	printf("state %s (layout %u), attached to:", bgs_pin_root, c->st.cfg.layout_version);
	for (err = bpf_map_get_next_key(c->st.fd[BGS_M_IFACES], NULL, &key); !err;
	     err = bpf_map_get_next_key(c->st.fd[BGS_M_IFACES], &key, &next), key = next) {
		if (bpf_map_lookup_elem(c->st.fd[BGS_M_IFACES], &key, &rec))
			continue;
		printf(" %.*s (%s XDP)", (int)sizeof(rec.name), rec.name,
		       rec.xdp_flags & XDP_FLAGS_SKB_MODE ? "generic" : "native");
		n++;
	}
	printf("%s\nflow table: %llu entries of %u, %llu live (%llu local sockets), %llu "
	       "evicted\n\n",
	       n ? "" : " nothing", (unsigned long long)c->cur.flow_entries, c->st.cfg.flow_entries,
	       (unsigned long long)c->cur.live_total, (unsigned long long)c->cur.local_total,
	       (unsigned long long)c->cur.evicted);
}

/* The snapshots taken, print them as the user asked. */
static int status_print(struct status_ctx *c)
{
	size_t i;

	if (c->json)
		return print_json(c);
	print_header(c);
	for (i = 0; i < c->cur.nsvcs; i++)
		print_service(c, &c->cur.svcs[i], !i);
	if (!c->cur.nsvcs)
		printf("no services\n");
	print_counters(c);
	return 0;
}

/* The fleet form: the documents in etcd and what the nodes report of them. */
static int status_fleet(const struct status_args *a, const struct bgs_parsed *p)
{
	struct fleet_conn conn = a->conn;

	if (!conn.prefix)
		conn.prefix = FLEET_DEFAULT_PREFIX;
	return fleet_status(&conn, p->npos ? p->pos[0] : NULL, a->json, a->wait,
			    params_seen(&bgs_spec_status, p, "timeout") ? a->timeout_ns :
									  FLEET_WAIT_DEFAULT_NS);
}

int do_status(int argc, char **argv)
{
	struct status_args a = { .interval = DEFAULT_INTERVAL_MS };
	struct status_ctx *c;
	const char *name;
	struct bgs_parsed p;
	__u32 interval;
	bool json;
	int err;

	err = params_parse(&bgs_spec_status, argc, argv, &a, &p);
	if (err || p.help)
		return err;
	if (p.fleet)
		return status_fleet(&a, &p);
	name = p.npos ? p.pos[0] : NULL;
	json = a.json;
	/* Scripts read JSON at once; rates there only when asked for with --interval. */
	interval = json && !params_seen(&bgs_spec_status, &p, "interval") ? 0 : a.interval;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->json = json;
	err = state_open(&c->st, false);
	if (err)
		goto out_free;
	if (interval) {
		struct timespec ts = { interval / 1000, (interval % 1000) * 1000000L };

		err = snapshot_take(&c->st, name, &c->prev);
		if (err)
			goto out;
		nanosleep(&ts, NULL);
	}
	err = snapshot_take(&c->st, name, &c->cur);
	if (err)
		goto out;
	c->rates = interval != 0;
	if (c->rates)
		c->secs = (c->cur.taken_ns - c->prev.taken_ns) / 1e9;

	err = status_print(c);
out:
	snapshot_free(&c->prev);
	snapshot_free(&c->cur);
	state_close(&c->st);
out_free:
	free(c);
	return err;
}
