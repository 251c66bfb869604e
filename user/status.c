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

/* A JSON string of at most len bytes of s, escaped by json-c: an interface name or a pin root
 * may hold '"', '\\' or control characters.
 */
static void print_json_str(const char *s, size_t len)
{
	struct json_object *o = json_object_new_string_len(s, strnlen(s, len));

	fputs(o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
							    JSON_C_TO_STRING_NOSLASHESCAPE) :
		  "null",
	      stdout);
	json_object_put(o);
}

static double rate(const struct status_ctx *c, __u64 now, __u64 before)
{
	return c->rates && c->secs > 0 && now >= before ? (now - before) / c->secs : 0;
}

static void print_backend(struct status_ctx *c, const struct bgs_service_view *sv, __u8 color,
			  const struct bgs_backend_view *bv, bool first)
{
	const struct bgs_backend_view *pv = snapshot_backend(&c->prev, sv->svc, bv->slot);
	struct bgs_backend_stats z = { 0 };
	const struct bgs_backend_stats *p = pv ? &pv->st : &z, *s = &bv->st;
	char ebuf[BGS_ADDRSTR_LEN], pct[16];

	if (c->json) {
		printf("%s{\"address\":\"%s\",\"port\":%u,\"slot\":%u,\"state\":\"%s\","
		       "\"weight\":%u,\"table_positions\":%u,"
		       "\"live_flows\":%u,\"local_flows\":%u,\"rx_packets\":%llu,\"rx_bytes\":%llu,"
		       "\"tx_packets\":%llu,\"tx_bytes\":%llu,\"new_flows\":%llu,"
		       "\"local_new_flows\":%llu,\"resets\":%llu",
		       first ? "" : ",", fmt_addr(bv->be.addr, bv->be.family, ebuf, sizeof(ebuf)),
		       ntohs(bv->be.port), bv->slot, backend_state_name(bv->be.state),
		       bv->be.weight, bv->positions, bv->live, bv->local,
		       (unsigned long long)s->rx_packets, (unsigned long long)s->rx_bytes,
		       (unsigned long long)s->tx_packets, (unsigned long long)s->tx_bytes,
		       (unsigned long long)s->new_flows, (unsigned long long)bv->local_opened,
		       (unsigned long long)s->resets);
		if (c->rates)
			printf(",\"rx_pps\":%.1f,\"tx_pps\":%.1f,\"new_flows_per_s\":%.1f}",
			       rate(c, s->rx_packets, p->rx_packets),
			       rate(c, s->tx_packets, p->tx_packets),
			       rate(c, s->new_flows, p->new_flows));
		else
			printf(",\"rx_pps\":null,\"tx_pps\":null,\"new_flows_per_s\":null}");
		return;
	}
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

static void print_service(struct status_ctx *c, const struct bgs_service_view *sv, bool first)
{
	const struct bgs_switch *sw = &sv->sw;
	char ebuf[BGS_ADDRSTR_LEN], pct[16];
	size_t i;
	__u8 col, act;

	if (c->json) {
		printf("%s{\"name\":", first ? "" : ",");
		print_json_str(sv->rec.name, sizeof(sv->rec.name));
		printf(",\"id\":%u,\"vip\":\"%s\",\"port\":%u,\"proto\":\"%s\",\"active\":\"%s\",",
		       sv->svc, fmt_addr(sv->rec.vip.addr, sv->rec.vip.family, ebuf, sizeof(ebuf)),
		       ntohs(sv->rec.vip.port), proto_name(sv->rec.vip.proto),
		       share_label(sw->share));
		if (sw->flags & BGS_SW_HAS_PREV)
			printf("\"previous\":\"%s\",\"previous_green_share\":%.2f,",
			       share_label(sw->prev_share), sw->prev_share / 100.0);
		else
			printf("\"previous\":null,\"previous_green_share\":null,");
		printf("\"green_share\":%.2f,\"lb\":\"%s\",\"table_size\":%u,\"split_by\":\"%s\",",
		       sw->share / 100.0, sv->rec.lb == BGS_LB_MODULO ? "modulo" : "maglev",
		       sv->rec.table_size,
		       sv->rec.vip_flags & BGS_VIP_SPLIT_CLIENT ? "client" : "flow");
		printf("\"generation\":%u,\"draining\":%s,\"syn_miss\":%llu,\"nosyn_miss\":%llu,"
		       "\"second_chance\":%llu,\"reopen\":%llu,\"drops\":{",
		       sw->generation, sw->flags & BGS_SW_DRAINING ? "true" : "false",
		       (unsigned long long)sv->st.syn_miss, (unsigned long long)sv->st.nosyn_miss,
		       (unsigned long long)sv->st.second_chance, (unsigned long long)sv->st.reopen);
		for (i = 0; i < BGS_DROP_MAX; i++)
			printf("%s\"%s\":%llu", i ? "," : "", bgs_drop_names[i],
			       (unsigned long long)sv->st.drops[i]);
		printf("},\"colors\":{");
		for (col = 0; col < BGS_NCOLORS; col++) {
			const struct bgs_color_view *cv = &sv->color[col];

			printf("%s\"%s\":{\"backends\":[", col ? "," : "", color_name(col));
			for (i = 0; i < cv->nbackends; i++)
				print_backend(c, sv, col, &cv->backends[i], !i);
			printf("],\"live_flows\":%llu,\"local_flows\":%llu,\"share\":%.2f}",
			       (unsigned long long)cv->live, (unsigned long long)cv->local,
			       (col == BGS_GREEN ? sw->share : BGS_SHARE_ALL - sw->share) / 100.0);
		}
		printf("}}");
		return;
	}

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
	printf("\n  %-6s %-24s %-8s %6s %7s %7s %10s %10s %10s %7s", "COLOR", "BACKEND", "STATE",
	       "WEIGHT", "TABLE", "LIVE", "NEW_FLOWS", "RX_PKTS", "TX_PKTS", "RESETS");
	if (c->rates)
		printf(" %8s %9s", "FLOWS/S", "RX_PPS");
	printf("\n");
	for (col = 0; col < BGS_NCOLORS; col++) {
		const struct bgs_color_view *cv = &sv->color[col];

		for (i = 0; i < cv->nbackends; i++)
			print_backend(c, sv, col, &cv->backends[i], !i);
		if (!cv->nbackends)
			printf("  %-6s (no backends)\n", color_name(col));
	}
	act = share_color(sw->share) == BGS_GREEN ? BGS_GREEN : BGS_BLUE;
	printf("  live flows: %s %llu, %s %llu", color_name(act),
	       (unsigned long long)sv->color[act].live, color_name(!act),
	       (unsigned long long)sv->color[!act].live);
	if (share_color(sw->share) != BGS_COLOR_NONE && sv->color[!act].live)
		printf(" (draining)");
	if (sv->color[act].local || sv->color[!act].local)
		printf(", local sockets among them: %s %llu, %s %llu", color_name(act),
		       (unsigned long long)sv->color[act].local, color_name(!act),
		       (unsigned long long)sv->color[!act].local);
	printf("; misses: syn %llu, non-syn %llu (%llu second chances)\n",
	       (unsigned long long)sv->st.syn_miss, (unsigned long long)sv->st.nosyn_miss,
	       (unsigned long long)sv->st.second_chance);
}

static void print_counters(struct status_ctx *c)
{
	int i;

	printf(c->json ? ",\"counters\":{" : "\ncounters:");
	for (i = 0; i < BGS_STAT_MAX; i++)
		printf(c->json ? "%s\"%s\":%llu" : "%s%s=%llu",
		       c->json && !i ? "" :
		       c->json	     ? "," :
				       " ",
		       bgs_stat_names[i], (unsigned long long)c->cur.stats[i]);
	printf(c->json ? "},\"drops\":{" : "\ndrops:");
	for (i = 0; i < BGS_DROP_MAX; i++)
		printf(c->json ? "%s\"%s\":%llu" : "%s%s=%llu",
		       c->json && !i ? "" :
		       c->json	     ? "," :
				       " ",
		       bgs_drop_names[i], (unsigned long long)c->cur.drops[i]);
	printf(c->json ? "}" : "\n");
}

static void print_header(struct status_ctx *c)
{
	__u32 key, next, n = 0;
	struct bgs_iface rec;
	int err;

	if (c->json) {
		printf("{\"layout_version\":%u,\"pin_root\":", c->st.cfg.layout_version);
		print_json_str(bgs_pin_root, PATH_MAX);
		printf(",\"interfaces\":[");
	} else
		printf("state %s (layout %u), attached to:", bgs_pin_root,
		       c->st.cfg.layout_version);
	for (err = bpf_map_get_next_key(c->st.fd[BGS_M_IFACES], NULL, &key); !err;
	     err = bpf_map_get_next_key(c->st.fd[BGS_M_IFACES], &key, &next), key = next) {
		const char *mode;

		if (bpf_map_lookup_elem(c->st.fd[BGS_M_IFACES], &key, &rec))
			continue;
		mode = rec.xdp_flags & XDP_FLAGS_SKB_MODE ? "generic" : "native";
		if (c->json) {
			printf("%s{\"name\":", n ? "," : "");
			print_json_str(rec.name, sizeof(rec.name));
			printf(",\"ifindex\":%u,\"mode\":\"%s\"}", key, mode);
		} else
			printf(" %s (%s XDP)", rec.name, mode);
		n++;
	}
	if (c->json)
		printf("],\"flow_table\":{\"capacity\":%u,\"entries\":%llu,\"live\":%llu,"
		       "\"local\":%llu,\"evicted\":%llu},"
		       "\"timeouts\":{\"tcp_idle_s\":%llu,\"udp_idle_s\":%llu},"
		       "\"interval_ms\":%.0f,\"services\":[",
		       c->st.cfg.flow_entries, (unsigned long long)c->cur.flow_entries,
		       (unsigned long long)c->cur.live_total,
		       (unsigned long long)c->cur.local_total, (unsigned long long)c->cur.evicted,
		       (unsigned long long)(c->st.cfg.tcp_idle_ns / 1000000000ULL),
		       (unsigned long long)(c->st.cfg.udp_idle_ns / 1000000000ULL),
		       c->rates ? c->secs * 1000 : 0);
	else
		printf("%s\nflow table: %llu entries of %u, %llu live (%llu local sockets), %llu "
		       "evicted\n\n",
		       n ? "" : " nothing", (unsigned long long)c->cur.flow_entries,
		       c->st.cfg.flow_entries, (unsigned long long)c->cur.live_total,
		       (unsigned long long)c->cur.local_total, (unsigned long long)c->cur.evicted);
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
	size_t i;

	err = params_parse(&bgs_spec_status, argc, argv, &a, &p);
	if (err || p.help)
		return err;
	if (p.fleet)
		return fleet_status(argc, argv);
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

	print_header(c);
	for (i = 0; i < c->cur.nsvcs; i++)
		print_service(c, &c->cur.svcs[i], !i);
	if (!c->cur.nsvcs && !json)
		printf("no services\n");
	if (json)
		printf("]");
	print_counters(c);
	if (json)
		printf("}\n");
out:
	snapshot_free(&c->prev);
	snapshot_free(&c->cur);
	state_close(&c->st);
out_free:
	free(c);
	return err;
}
