// SPDX-License-Identifier: GPL-2.0
/* status.c: `status`: services, colors, backends, live flows and counters, as text or JSON. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>

#include "commands.h"
#include "log.h"
#include "state.h"
#include "util.h"

static const char *const stat_names[BGS_STAT_MAX] = {
	[BGS_STAT_RX] = "rx",
	[BGS_STAT_NOT_VIP] = "not_vip",
	[BGS_STAT_NOT_IP] = "not_ip",
	[BGS_STAT_PARSE_ERR] = "parse_error",
	[BGS_STAT_FRAGMENT] = "fragment",
	[BGS_STAT_VIP] = "vip",
	[BGS_STAT_FLOW_HIT] = "flow_hit",
	[BGS_STAT_FLOW_NEW] = "flow_new",
	[BGS_STAT_FLOW_REOPEN] = "flow_reopen",
	[BGS_STAT_SYN_MISS] = "syn_miss",
	[BGS_STAT_NOSYN_MISS] = "nosyn_miss",
	[BGS_STAT_TX] = "tx",
	[BGS_STAT_REPLY_NAT] = "reply_nat",
	[BGS_STAT_REPLY_NO_FLOW] = "reply_no_flow",
};

static const char *const drop_names[BGS_DROP_MAX] = {
	[BGS_DROP_NOSYN_MISS] = "nosyn_miss",
	[BGS_DROP_NO_BACKEND] = "no_backend",
	[BGS_DROP_BAD_BACKEND] = "bad_backend",
	[BGS_DROP_FLOW_INSERT] = "flow_insert",
};

#define BACKEND_STAT_FIELDS (sizeof(struct bgs_backend_stats) / sizeof(__u64))

struct status_ctx {
	struct bgs_state st;
	struct bgs_flow_census census;
	bool json;
	int nsvc;
};

static const char *state_name(__u8 state)
{
	return state == BGS_BACKEND_ACTIVE   ? "active" :
	       state == BGS_BACKEND_DRAINING ? "draining" :
					       "free";
}

static void status_usage(void)
{
	printf("Usage: bgswitch status [NAME] [--json]\n"
	       "\n"
	       "Show each service (or NAME): its VIP, active color and generation, the backends\n"
	       "of both colors with their live flows and counters, how many flows still drain to\n"
	       "the inactive color, and the node's counters.\n"
	       "\n"
	       "  -j, --json   machine-readable output (schema in README.md)\n"
	       "  -h, --help   this help\n");
}

/* Backends of one color: those in its current set, then its draining ones. */
static void print_color(struct status_ctx *c, __u32 svc, __u8 color, __u64 *color_live)
{
	struct bgs_backend_stats bs;
	struct bgs_backend be;
	struct bgs_set set;
	char ebuf[BGS_ADDRSTR_LEN];
	bool first = true;
	__u32 slot;
	int pass;

	*color_live = 0;
	if (set_read(&c->st, svc, color, &set))
		set.count = 0;
	for (pass = 0; pass < 2; pass++) {
		__u32 i, n = pass ? BGS_MAX_SLOTS : set.count;

		for (i = 0; i < n; i++) {
			slot = pass ? i : set.slot[i];
			if (bpf_map_lookup_elem(c->st.fd[BGS_M_BACKENDS], &slot, &be) ||
			    be.state == BGS_BACKEND_FREE || be.svc != svc || be.color != color)
				continue;
			if (pass == 1 && be.state != BGS_BACKEND_DRAINING)
				continue;
			if (percpu_sum(&c->st, BGS_M_BACKEND_STATS, slot, (__u64 *)&bs,
				       BACKEND_STAT_FIELDS))
				memset(&bs, 0, sizeof(bs));
			*color_live += c->census.live[slot];
			fmt_endpoint(be.addr, be.port, be.family, ebuf, sizeof(ebuf));
			if (c->json) {
				printf("%s{\"address\":\"%s\",\"port\":%u,\"slot\":%u,"
				       "\"state\":\"%s\",\"live_flows\":%u,\"rx_packets\":%llu,"
				       "\"rx_bytes\":%llu,\"tx_packets\":%llu,\"tx_bytes\":%llu,"
				       "\"new_flows\":%llu,\"resets\":%llu}",
				       first ? "" : ",",
				       fmt_addr(be.addr, be.family, ebuf, sizeof(ebuf)),
				       ntohs(be.port), slot, state_name(be.state),
				       c->census.live[slot], (unsigned long long)bs.rx_packets,
				       (unsigned long long)bs.rx_bytes,
				       (unsigned long long)bs.tx_packets,
				       (unsigned long long)bs.tx_bytes,
				       (unsigned long long)bs.new_flows,
				       (unsigned long long)bs.resets);
			} else {
				printf("  %-6s %-24s %-8s %8u %10llu %12llu %12llu %8llu\n",
				       color_name(color), ebuf, state_name(be.state),
				       c->census.live[slot], (unsigned long long)bs.new_flows,
				       (unsigned long long)bs.rx_packets,
				       (unsigned long long)bs.tx_packets,
				       (unsigned long long)bs.resets);
			}
			first = false;
		}
	}
	if (!c->json && first)
		printf("  %-6s (no backends)\n", color_name(color));
}

static void print_service(struct status_ctx *c, __u32 svc, const struct bgs_service *rec)
{
	struct bgs_switch sw = switch_read(&c->st, svc);
	char ebuf[BGS_ADDRSTR_LEN];
	__u64 live[BGS_NCOLORS];
	__u8 color;

	if (c->json) {
		printf("%s{\"name\":\"%s\",\"id\":%u,\"vip\":\"%s\",\"port\":%u,\"proto\":\"%s\","
		       "\"active\":\"%s\",",
		       c->nsvc ? "," : "", rec->name, svc,
		       fmt_addr(rec->vip.addr, rec->vip.family, ebuf, sizeof(ebuf)),
		       ntohs(rec->vip.port), proto_name(rec->vip.proto), color_name(sw.active));
		if (sw.previous < BGS_NCOLORS)
			printf("\"previous\":\"%s\",", color_name(sw.previous));
		else
			printf("\"previous\":null,");
		printf("\"generation\":%u,\"colors\":{", sw.generation);
		for (color = 0; color < BGS_NCOLORS; color++) {
			printf("%s\"%s\":{\"backends\":[", color ? "," : "", color_name(color));
			print_color(c, svc, color, &live[color]);
			printf("],\"live_flows\":%llu}", (unsigned long long)live[color]);
		}
		printf("}}");
	} else {
		printf("%s%s  %s/%s  active %s  generation %u", c->nsvc ? "\n" : "", rec->name,
		       fmt_endpoint(rec->vip.addr, rec->vip.port, rec->vip.family, ebuf,
				    sizeof(ebuf)),
		       proto_name(rec->vip.proto), color_name(sw.active), sw.generation);
		if (sw.previous < BGS_NCOLORS)
			printf("  (was %s)", color_name(sw.previous));
		printf("\n  %-6s %-24s %-8s %8s %10s %12s %12s %8s\n", "COLOR", "BACKEND", "STATE",
		       "LIVE", "NEW_FLOWS", "RX_PACKETS", "TX_PACKETS", "RESETS");
		for (color = 0; color < BGS_NCOLORS; color++)
			print_color(c, svc, color, &live[color]);
		printf("  live flows: %s %llu, %s %llu", color_name(sw.active),
		       (unsigned long long)live[sw.active], color_name(!sw.active),
		       (unsigned long long)live[!sw.active]);
		if (live[!sw.active])
			printf(" (draining)");
		printf("\n");
	}
	c->nsvc++;
}

static void print_counters(struct status_ctx *c)
{
	__u64 v;
	int i, n;

	printf(c->json ? ",\"counters\":{" : "\ncounters:");
	for (i = 0, n = 0; i < BGS_STAT_MAX; i++) {
		if (percpu_sum(&c->st, BGS_M_STATS, i, &v, 1))
			v = 0;
		if (c->json)
			printf("%s\"%s\":%llu", n++ ? "," : "", stat_names[i],
			       (unsigned long long)v);
		else
			printf(" %s=%llu", stat_names[i], (unsigned long long)v);
	}
	printf(c->json ? "},\"drops\":{" : "\ndrops:");
	for (i = 0, n = 0; i < BGS_DROP_MAX; i++) {
		if (percpu_sum(&c->st, BGS_M_DROPS, i, &v, 1))
			v = 0;
		if (c->json)
			printf("%s\"%s\":%llu", n++ ? "," : "", drop_names[i],
			       (unsigned long long)v);
		else
			printf(" %s=%llu", drop_names[i], (unsigned long long)v);
	}
	printf(c->json ? "}" : "\n");
}

static void print_header(struct status_ctx *c)
{
	__u32 key, next, n = 0;
	struct bgs_iface rec;
	int err;

	if (c->json)
		printf("{\"layout_version\":%u,\"pin_root\":\"%s\",\"interfaces\":[",
		       c->st.cfg.layout_version, bgs_pin_root);
	else
		printf("state %s (layout %u), attached to:", bgs_pin_root,
		       c->st.cfg.layout_version);
	for (err = bpf_map_get_next_key(c->st.fd[BGS_M_IFACES], NULL, &key); !err;
	     err = bpf_map_get_next_key(c->st.fd[BGS_M_IFACES], &key, &next), key = next) {
		const char *mode;

		if (bpf_map_lookup_elem(c->st.fd[BGS_M_IFACES], &key, &rec))
			continue;
		mode = rec.xdp_flags & XDP_FLAGS_SKB_MODE ? "generic" : "native";
		if (c->json)
			printf("%s{\"name\":\"%s\",\"ifindex\":%u,\"mode\":\"%s\"}", n ? "," : "",
			       rec.name, key, mode);
		else
			printf(" %s (%s XDP)", rec.name, mode);
		n++;
	}
	if (c->json)
		printf("],\"flow_table\":{\"capacity\":%u,\"entries\":%llu,\"live\":%llu},"
		       "\"timeouts\":{\"tcp_idle_s\":%llu,\"udp_idle_s\":%llu},\"services\":[",
		       c->st.cfg.flow_entries, (unsigned long long)c->census.entries,
		       (unsigned long long)c->census.live_total,
		       (unsigned long long)(c->st.cfg.tcp_idle_ns / 1000000000ULL),
		       (unsigned long long)(c->st.cfg.udp_idle_ns / 1000000000ULL));
	else
		printf("%s\nflow table: %llu entries of %u, %llu live\n\n", n ? "" : " nothing",
		       (unsigned long long)c->census.entries, c->st.cfg.flow_entries,
		       (unsigned long long)c->census.live_total);
}

int do_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct status_ctx *c;
	struct bgs_service rec;
	const char *name = NULL;
	bool json = false;
	__u32 svc;
	int opt, err;

	while ((opt = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (opt) {
		case 'j':
			json = true;
			break;
		case 'h':
			status_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (argc - optind > 1) {
		pr_warn("status takes at most one service name\n");
		return -EINVAL;
	}
	if (argc - optind == 1)
		name = argv[optind];

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->json = json;
	err = state_open(&c->st, false);
	if (err)
		goto out_free;
	if (name) {
		err = service_find(&c->st, name, &svc, &rec);
		if (err)
			goto out;
	}
	err = flows_census(&c->st, &c->census);
	if (err)
		goto out;

	print_header(c);
	if (name) {
		print_service(c, svc, &rec);
	} else {
		for (svc = 0; svc < BGS_MAX_SERVICES; svc++)
			if (service_get(&c->st, svc, &rec))
				print_service(c, svc, &rec);
		if (!c->nsvc && !json)
			printf("no services\n");
	}
	if (json)
		printf("]");
	print_counters(c);
	if (json)
		printf("}\n");
out:
	state_close(&c->st);
out_free:
	free(c);
	return err;
}
