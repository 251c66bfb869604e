// SPDX-License-Identifier: GPL-2.0
/* maint.c: `timeouts` and `gc`: flow lifetimes, and collecting the flows past them. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <bpf/bpf.h>

#include "commands.h"
#include "log.h"
#include "state.h"
#include "util.h"

#define NS 1000000000ULL
#define MAX_TIMEOUT_NS (7ULL * 24 * 3600 * NS)

static void timeouts_usage(void)
{
	printf("Usage: bgswitch timeouts [--tcp-idle D] [--udp-idle D] [--closing D]\n"
	       "\n"
	       "Show, or set, how long flows live. A TCP flow is live until it closes (RST, or\n"
	       "FIN from both sides) or sees no client packet for --tcp-idle (default %us); a\n"
	       "UDP flow until it sees none for --udp-idle (default %us). A closed flow's entry\n"
	       "stays --closing (default %us) for late packets, then 'gc' collects it. Durations\n"
	       "take ms, s, m or h (default s). A packet of a live flow never moves: the\n"
	       "timeouts decide what counts as live, what gc collects, and when a new SYN or UDP\n"
	       "packet may start over on an idle 5-tuple.\n"
	       "\n"
	       "  -t, --tcp-idle D   TCP idle timeout\n"
	       "  -u, --udp-idle D   UDP idle timeout\n"
	       "  -c, --closing D    how long a closed TCP flow's entry stays\n"
	       "  -h, --help         this help\n",
	       BGS_TCP_IDLE_SEC, BGS_UDP_IDLE_SEC, BGS_CLOSING_SEC);
}

int do_timeouts(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "tcp-idle", required_argument, NULL, 't' },
		{ "udp-idle", required_argument, NULL, 'u' },
		{ "closing", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	__u64 tcp = 0, udp = 0, closing = 0;
	struct bgs_config cfg;
	struct bgs_state st;
	__u32 zero = 0;
	int c, err;

	while ((c = getopt_cmd(argc, argv, "t:u:c:h", opts)) != -1) {
		switch (c) {
		case 't':
			if (parse_duration_ns(optarg, NS, MAX_TIMEOUT_NS, &tcp))
				return -EINVAL;
			break;
		case 'u':
			if (parse_duration_ns(optarg, NS, MAX_TIMEOUT_NS, &udp))
				return -EINVAL;
			break;
		case 'c':
			if (parse_duration_ns(optarg, 100000000ULL, MAX_TIMEOUT_NS, &closing))
				return -EINVAL;
			break;
		case 'h':
			timeouts_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (optind != argc) {
		pr_warn("timeouts takes only options (see 'bgswitch timeouts --help')\n");
		return -EINVAL;
	}
	err = state_open(&st, tcp || udp || closing);
	if (err)
		return err;
	cfg = st.cfg;
	if (tcp || udp || closing) {
		if (tcp)
			cfg.tcp_idle_ns = tcp;
		if (udp)
			cfg.udp_idle_ns = udp;
		if (closing)
			cfg.closing_ns = closing;
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

static void gc_usage(void)
{
	printf("Usage: bgswitch gc\n"
	       "\n"
	       "Delete flow entries past their time (closed for longer than the closing timeout,\n"
	       "or idle past their idle timeout; a UDP entry stays while its service drains),\n"
	       "free the slots of removed backends that no live flow needs any more, and clear the\n"
	       "draining flag of services whose other color has drained. It also repairs what a\n"
	       "command killed half way left: unfinished service records, slots in no set, stale\n"
	       "counts.\n"
	       "The exporter runs it periodically; run it from a timer where no exporter runs.\n");
}

int do_gc(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bgs_state st;
	__u64 deleted = 0;
	int c, err;

	while ((c = getopt_cmd(argc, argv, "h", opts)) != -1) {
		if (c == 'h') {
			gc_usage();
			return 0;
		}
		return -EINVAL;
	}
	if (optind != argc) {
		pr_warn("gc takes no arguments\n");
		return -EINVAL;
	}
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

static void limits_usage(void)
{
	printf("Usage: bgswitch limits [--new-flows N] [--burst N]\n"
	       "\n"
	       "Show, or set, the flow-table insert limit of the node: at most N new flow entries\n"
	       "per second (default: the flow table's size every %u s; 0: no limit), plus a burst\n"
	       "(default: an eighth of the table), split evenly between the CPUs. Above it, a new\n"
	       "flow's packets are still forwarded where the flow belongs, but get no entry\n"
	       "(counted untracked): a flood of new flows cannot evict the established ones.\n"
	       "\n"
	       "  -n, --new-flows N   inserts per second, for the whole node\n"
	       "  -b, --burst N       inserts the node may make at once above the rate\n"
	       "  -h, --help          this help\n",
	       BGS_NEW_FLOW_TURNOVER);
}

int do_limits(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "new-flows", required_argument, NULL, 'n' },
		{ "burst", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	__u32 rate = 0, burst = 0, zero = 0;
	bool set_rate = false, set_burst = false;
	struct bgs_config cfg;
	struct bgs_state st;
	int c, err;

	while ((c = getopt_cmd(argc, argv, "n:b:h", opts)) != -1) {
		switch (c) {
		case 'n':
			if (parse_u32(optarg, 0, 100000000, &rate)) {
				pr_warn("--new-flows must be a number from 0 to 100000000\n");
				return -EINVAL;
			}
			set_rate = true;
			break;
		case 'b':
			if (parse_u32(optarg, 0, 100000000, &burst)) {
				pr_warn("--burst must be a number from 0 to 100000000\n");
				return -EINVAL;
			}
			set_burst = true;
			break;
		case 'h':
			limits_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (optind != argc) {
		pr_warn("limits takes only options (see 'bgswitch limits --help')\n");
		return -EINVAL;
	}
	err = state_open(&st, set_rate || set_burst);
	if (err)
		return err;
	cfg = st.cfg;
	if (set_rate || set_burst) {
		config_set_limits(&cfg, set_rate ? rate : cfg.node_flow_rate,
				  set_burst ? burst : cfg.node_flow_burst);
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
