// SPDX-License-Identifier: GPL-2.0
/* check_drain.c: `check` and `drain`: looks at one color that change nothing, the probes a flip
 * to it would make, and the wait until it has no live flow.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>

#include "commands.h"
#include "cutover.h"
#include "log.h"

#define MS 1000000ULL

static void check_usage(void)
{
	printf("Usage: bgswitch check NAME blue|green [--check-http PATH] [--check-timeout D]\n"
	       "\n"
	       "Probe every backend of one color of NAME from this node, as a flip to it would,\n"
	       "all at once: a TCP connect, or an HTTP GET of PATH (2xx or 3xx passes). One line\n"
	       "per backend; exit status 3 if any fails. Changes nothing.\n"
	       "\n"
	       "  -H, --check-http PATH   probe with GET PATH\n"
	       "  -T, --check-timeout D   probe timeout (default 1s)\n"
	       "  -h, --help              this help\n");
}

/* Returns 1 after --help. */
static int check_getopt(int argc, char **argv, struct bgs_check_opts *chk)
{
	static const struct option opts[] = {
		{ "check-http", required_argument, NULL, 'H' },
		{ "check-timeout", required_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	while ((c = getopt_cmd(argc, argv, "H:T:h", opts)) != -1) {
		switch (c) {
		case 'H':
			if (check_http_path(optarg))
				return -EINVAL;
			chk->http_path = optarg;
			break;
		case 'T':
			if (parse_duration_ns(optarg, 10 * MS, 60 * CUT_NS, &chk->timeout_ns))
				return -EINVAL;
			break;
		case 'h':
			check_usage();
			return 1;
		default:
			return -EINVAL;
		}
	}
	return 0;
}

/* One line per probe on stdout; BGS_ERR_CHECK if one failed. */
static int check_print(const struct bgs_service *rec, __u8 color, const struct bgs_check_opts *chk,
		       const struct bgs_probe *p, __u32 n)
{
	char ebuf[BGS_ADDRSTR_LEN], fails[512];
	__u32 i, nfail;

	for (i = 0; i < n; i++) {
		fmt_endpoint(p[i].ep.addr, p[i].ep.port, p[i].ep.family, ebuf, sizeof(ebuf));
		if (p[i].ok)
			printf("%-5s %-24s ok      %s, %.1f ms\n", color_name(color), ebuf,
			       chk->http_path ? "http" : "tcp connect", p[i].elapsed_ns / 1e6);
		else
			printf("%-5s %-24s FAILED  %s\n", color_name(color), ebuf, p[i].error);
	}
	nfail = bgs_check_failures(p, n, fails, sizeof(fails));
	if (!nfail)
		return 0;
	fflush(stdout);
	pr_warn("%s: %u of %u %s backends failed the %s check\n", rec->name, nfail, n,
		color_name(color), chk->http_path ? "HTTP" : "TCP");
	return BGS_ERR_CHECK;
}

int do_check(int argc, char **argv)
{
	struct bgs_check_opts chk = { .timeout_ns = BGS_CHECK_TIMEOUT_NS };
	struct bgs_probe *p = NULL;
	struct bgs_service rec;
	struct bgs_state st;
	__u32 svc, n;
	__u8 color;
	int err;

	err = check_getopt(argc, argv, &chk);
	if (err)
		return err > 0 ? 0 : err;
	if (argc - optind != 2)
		return bad_args("check");
	if (parse_color(argv[optind + 1], &color))
		return -EINVAL;
	err = state_open(&st, false);
	if (err)
		return err;
	err = service_find(&st, argv[optind], &svc, &rec);
	if (!err && rec.vip.proto != IPPROTO_TCP) {
		pr_warn("'%s' is a UDP service; probes are TCP\n", rec.name);
		err = -EINVAL;
	}
	if (!err)
		err = bgs_check_color(&st, svc, &rec, color, &chk, &p, &n);
	if (!err)
		err = check_print(&rec, color, &chk, p, n);
	free(p);
	state_close(&st);
	return err;
}

static void drain_usage(void)
{
	printf("Usage: bgswitch drain NAME [--timeout D] [--interval MS]\n"
	       "\n"
	       "Wait until the inactive color of NAME has no live flow (closed and idle flows do\n"
	       "not count), printing its live flows every interval. Exit status 5 if some are\n"
	       "still live after the timeout. Changes nothing.\n"
	       "\n"
	       "  -t, --timeout D     how long to wait (default 15m)\n"
	       "  -i, --interval MS   progress period, 100 to 60000 (default 1000)\n"
	       "  -h, --help          this help\n");
}

/* Returns 1 after --help. */
static int drain_getopt(int argc, char **argv, __u64 *timeout_ns, __u32 *interval)
{
	static const struct option opts[] = {
		{ "timeout", required_argument, NULL, 't' },
		{ "interval", required_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	while ((c = getopt_cmd(argc, argv, "t:i:h", opts)) != -1) {
		switch (c) {
		case 't':
			if (parse_duration_ns(optarg, 0, CUT_MAX_WAIT_NS, timeout_ns))
				return -EINVAL;
			break;
		case 'i':
			if (parse_u32(optarg, 100, 60000, interval)) {
				pr_warn("--interval must be 100 to 60000 milliseconds\n");
				return -EINVAL;
			}
			break;
		case 'h':
			drain_usage();
			return 1;
		default:
			return -EINVAL;
		}
	}
	return 0;
}

int do_drain(int argc, char **argv)
{
	__u64 timeout_ns = CUT_DRAIN_TIMEOUT_NS;
	struct bgs_service rec;
	struct bgs_state st;
	__u32 svc, interval = 1000;
	int err;

	err = drain_getopt(argc, argv, &timeout_ns, &interval);
	if (err)
		return err > 0 ? 0 : err;
	if (argc - optind != 1)
		return bad_args("drain");
	err = state_open(&st, false);
	if (err)
		return err;
	err = service_find(&st, argv[optind], &svc, &rec);
	if (!err && share_color(switch_read(&st, svc).share) == BGS_COLOR_NONE) {
		pr_warn("'%s' is split between colors: both take new flows, neither drains\n",
			rec.name);
		err = -EINVAL;
	}
	if (!err)
		err = bgs_drain_wait(&st, svc, rec.name, !share_color(switch_read(&st, svc).share),
				     timeout_ns, interval * MS);
	state_close(&st);
	return err;
}
