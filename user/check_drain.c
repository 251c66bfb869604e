// SPDX-License-Identifier: GPL-2.0
/* check_drain.c: `check` and `drain`: looks at one color that change nothing, the probes a flip
 * to it would make, and the wait until it has no live flow.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>

#include "commands.h"
#include "cutover.h"
#include "log.h"

#define MS 1000000ULL

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
	struct bgs_probe *p = NULL;
	struct cut_cmd c;
	struct bgs_service rec;
	struct bgs_state st;
	__u32 svc, n;
	__u8 color;
	int err;

	err = cut_parse(&bgs_spec_check, argc, argv, &c);
	if (err)
		return err > 0 ? 0 : err;
	if (parse_color(c.p.pos[1], &color))
		return -EINVAL;
	err = state_open(&st, false);
	if (err)
		return err;
	err = service_find(&st, c.p.pos[0], &svc, &rec);
	if (!err && rec.vip.proto != IPPROTO_TCP) {
		pr_warn("'%s' is a UDP service; probes are TCP\n", rec.name);
		err = -EINVAL;
	}
	if (!err)
		err = bgs_check_color(&st, svc, &rec, color, &c.chk, &p, &n);
	if (!err)
		err = check_print(&rec, color, &c.chk, p, n);
	free(p);
	state_close(&st);
	return err;
}

int do_drain(int argc, char **argv)
{
	struct bgs_service rec;
	struct bgs_state st;
	struct cut_cmd c;
	__u32 svc;
	int err;

	err = cut_parse(&bgs_spec_drain, argc, argv, &c);
	if (err)
		return err > 0 ? 0 : err;
	err = state_open(&st, false);
	if (err)
		return err;
	err = service_find(&st, c.p.pos[0], &svc, &rec);
	if (!err && share_color(switch_read(&st, svc).share) == BGS_COLOR_NONE) {
		pr_warn("'%s' is split between colors: both take new flows, neither drains\n",
			rec.name);
		err = -EINVAL;
	}
	if (!err)
		err = bgs_drain_wait(&st, svc, rec.name, !share_color(switch_read(&st, svc).share),
				     c.a.timeout_ns, c.a.interval_ms * MS);
	state_close(&st);
	return err;
}
