// SPDX-License-Identifier: GPL-2.0
/* maint.c: `timeouts` and `gc`: flow lifetimes, and collecting the flows past them. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <bpf/bpf.h>

#include "commands.h"
#include "log.h"
#include "specs.h"
#include "state.h"
#include "util.h"

#define NS 1000000000ULL
#define MAX_TIMEOUT_NS (7ULL * 24 * 3600 * NS)

struct timeouts_args {
	__u64 tcp, udp, closing;
};

/* The defaults the help text names. */
_Static_assert(BGS_TCP_IDLE_SEC == 900 && BGS_UDP_IDLE_SEC == 30 && BGS_CLOSING_SEC == 10,
	       "timeouts' help text");

static const struct bgs_opt timeouts_opts[] = {
	{ .name = "tcp-idle",
	  .short_name = 't',
	  .type = BGS_OPT_DURATION,
	  .off = offsetof(struct timeouts_args, tcp),
	  .metavar = "D",
	  .help = "TCP idle timeout",
	  .min = NS,
	  .max = MAX_TIMEOUT_NS },
	{ .name = "udp-idle",
	  .short_name = 'u',
	  .type = BGS_OPT_DURATION,
	  .off = offsetof(struct timeouts_args, udp),
	  .metavar = "D",
	  .help = "UDP idle timeout",
	  .min = NS,
	  .max = MAX_TIMEOUT_NS },
	{ .name = "closing",
	  .short_name = 'c',
	  .type = BGS_OPT_DURATION,
	  .off = offsetof(struct timeouts_args, closing),
	  .metavar = "D",
	  .help = "how long a closed TCP flow's entry stays",
	  .min = 100000000ULL,
	  .max = MAX_TIMEOUT_NS },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_timeouts = {
	.name = "timeouts",
	.summary = "show or set how long flows live",
	.description =
		"Show, or set, how long flows live. A TCP flow is live until it closes (RST, "
		"or FIN from both sides) or sees no client packet for --tcp-idle (default "
		"900s); a UDP flow until it sees none for --udp-idle (default 30s). A closed "
		"flow's entry stays --closing (default 10s) for late packets, then 'gc' "
		"collects it. Durations take ms, s, m or h (default s). A packet of a live "
		"flow never moves: the timeouts decide what counts as live, what gc "
		"collects, and when a new SYN or UDP packet may start over on an idle "
		"5-tuple.",
	.opts = timeouts_opts,
};

int do_timeouts(int argc, char **argv)
{
	struct timeouts_args a = { 0 };
	struct bgs_config cfg;
	struct bgs_parsed p;
	struct bgs_state st;
	__u32 zero = 0;
	bool set;
	int err;

	err = params_parse(&bgs_spec_timeouts, argc, argv, &a, &p);
	if (err || p.help)
		return err;
	set = a.tcp || a.udp || a.closing;
	err = state_open(&st, set);
	if (err)
		return err;
	cfg = st.cfg;
	if (set) {
		if (a.tcp)
			cfg.tcp_idle_ns = a.tcp;
		if (a.udp)
			cfg.udp_idle_ns = a.udp;
		if (a.closing)
			cfg.closing_ns = a.closing;
		if (bpf_map_update_elem(st.fd[BGS_M_CONFIG], &zero, &cfg, BPF_EXIST)) {
			err = -errno;
			pr_warn("cannot write bgs_config: %s\n", strerror(errno));
			goto out;
		}
	}
	printf("tcp-idle %llus, udp-idle %llus, closing %llums\n",
	       (unsigned long long)(cfg.tcp_idle_ns / NS),
	       (unsigned long long)(cfg.udp_idle_ns / NS),
	       (unsigned long long)(cfg.closing_ns / 1000000ULL));
out:
	state_close(&st);
	return err;
}

const struct bgs_cmd_spec bgs_spec_gc = {
	.name = "gc",
	.summary = "collect expired flows, free unused slots, repair what was cut short",
	.description =
		"Delete flow entries past their time (closed for longer than the closing "
		"timeout, or idle past their idle timeout; a UDP entry stays while its "
		"service drains), free the slots of removed backends that no live flow needs "
		"any more, and clear the draining flag of services whose other color has "
		"drained. It also repairs what a command killed half way left: unfinished "
		"service records, slots in no set, stale counts.\nThe exporter runs it "
		"periodically; run it from a timer where no exporter runs.",
};

int do_gc(int argc, char **argv)
{
	struct bgs_parsed p;
	struct bgs_state st;
	__u64 deleted = 0;
	int err;

	err = params_parse(&bgs_spec_gc, argc, argv, NULL, &p);
	if (err || p.help)
		return err;
	err = state_open(&st, true);
	if (err)
		return err;
	/* The drain first: a finished one no longer keeps its expired UDP entries. */
	err = drain_settle(&st);
	if (!err)
		err = flows_collect(&st, &deleted);
	if (!err)
		err = state_repair(&st);
	if (!err)
		pr_info("collected %llu expired flow entries\n", (unsigned long long)deleted);
	state_close(&st);
	return err;
}

struct limits_args {
	__u32 rate, burst;
};

_Static_assert(BGS_NEW_FLOW_TURNOVER == 2, "limits' help text");

static const struct bgs_opt limits_opts[] = {
	{ .name = "new-flows",
	  .short_name = 'n',
	  .type = BGS_OPT_U32,
	  .off = offsetof(struct limits_args, rate),
	  .metavar = "N",
	  .help = "inserts per second, for the whole node",
	  .max = 100000000 },
	{ .name = "burst",
	  .short_name = 'b',
	  .type = BGS_OPT_U32,
	  .off = offsetof(struct limits_args, burst),
	  .metavar = "N",
	  .help = "inserts the node may make at once above the rate",
	  .max = 100000000 },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_limits = {
	.name = "limits",
	.summary = "show or set the node's limit on new flow entries",
	.description =
		"Show, or set, the flow-table insert limit of the node: at most N new flow "
		"entries per second (default: the flow table's size every 2 s; 0: no limit), "
		"plus a burst (default: an eighth of the table), split evenly between the "
		"CPUs. Above it, a new flow's packets are still forwarded where the flow "
		"belongs, but get no entry (counted untracked): a flood of new flows cannot "
		"evict the established ones.",
	.opts = limits_opts,
};

int do_limits(int argc, char **argv)
{
	struct limits_args a = { 0 };
	bool set_rate, set_burst;
	struct bgs_config cfg;
	struct bgs_parsed p;
	struct bgs_state st;
	__u32 zero = 0;
	int err;

	err = params_parse(&bgs_spec_limits, argc, argv, &a, &p);
	if (err || p.help)
		return err;
	set_rate = params_seen(&bgs_spec_limits, &p, "new-flows");
	set_burst = params_seen(&bgs_spec_limits, &p, "burst");
	err = state_open(&st, set_rate || set_burst);
	if (err)
		return err;
	cfg = st.cfg;
	if (set_rate || set_burst) {
		config_set_limits(&cfg, set_rate ? a.rate : cfg.node_flow_rate,
				  set_burst ? a.burst : cfg.node_flow_burst);
		if (bpf_map_update_elem(st.fd[BGS_M_CONFIG], &zero, &cfg, BPF_EXIST)) {
			err = -errno;
			pr_warn("cannot write bgs_config: %s\n", strerror(errno));
			goto out;
		}
	}
	if (cfg.new_flow_rate)
		printf("new flows %u per second, burst %u (per CPU: %u, burst %u)\n",
		       cfg.node_flow_rate, cfg.node_flow_burst, cfg.new_flow_rate,
		       cfg.new_flow_burst);
	else
		printf("new flows: no limit\n");
out:
	state_close(&st);
	return err;
}
