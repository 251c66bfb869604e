// SPDX-License-Identifier: GPL-2.0
/* check.c: the checks before a switch: every backend of the color that gains is probed from
 * this node (a TCP connect, or an HTTP GET), and a failure refuses the switch unless forced.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>

#include "log.h"
#include "ops.h"

int bgs_check_color(const struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
		    __u8 color, const struct bgs_check_opts *chk, struct bgs_probe **out,
		    __u32 *nout)
{
	struct bgs_probe *p = NULL;
	struct bgs_backend be;
	struct bgs_set set;
	__u32 i, n = 0;
	int err;

	*out = NULL;
	*nout = 0;
	err = set_read(st, svc, color, &set);
	if (err)
		return err;
	if (!set.count) {
		pr_warn("%s of '%s' has no backends\n", color_name(color), rec->name);
		return -ENOENT;
	}
	p = calloc(set.count, sizeof(*p));
	if (!p)
		return -ENOMEM;
	for (i = 0; i < set.count; i++) {
		/* a backend of weight 0 takes no new flow: nothing to check */
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &set.slot[i], &be) || !be.weight)
			continue;
		memcpy(p[n].ep.addr, be.addr, sizeof(be.addr));
		p[n].ep.port = be.port;
		p[n].ep.family = be.family;
		n++;
	}
	err = probe_run(p, n, chk->http_path, chk->timeout_ns);
	if (err) {
		pr_warn("cannot probe the backends: %s\n", strerror(-err));
		free(p);
		return err;
	}
	*out = p;
	*nout = n;
	return 0;
}

__u32 bgs_check_failures(const struct bgs_probe *p, __u32 n, char *buf, size_t len)
{
	char ebuf[BGS_ADDRSTR_LEN];
	__u32 i, nfail = 0;
	size_t used = 0;

	buf[0] = '\0';
	for (i = 0; i < n; i++) {
		if (p[i].ok)
			continue;
		fmt_endpoint(p[i].ep.addr, p[i].ep.port, p[i].ep.family, ebuf, sizeof(ebuf));
		if (used < len)
			used += snprintf(buf + used, len - used, "%s%s (%s)", nfail ? ", " : "",
					 ebuf, p[i].error);
		nfail++;
	}
	return nfail;
}

int bgs_switch_checks(const struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u8 to,
		      const struct bgs_check_opts *chk, bool force, struct bgs_audit *au)
{
	struct bgs_probe *p;
	__u32 nfail, n;
	char fails[512];
	int err;

	if (!chk || chk->skip)
		return 0;
	if (rec->vip.proto != IPPROTO_TCP) {
		if (chk->http_path) {
			pr_warn("--check-http: '%s' is a UDP service; probes are TCP\n", rec->name);
			return -EINVAL;
		}
		pr_info("%s: UDP service, backends not probed\n", rec->name);
		return 0;
	}
	err = bgs_check_color(st, svc, rec, to, chk, &p, &n);
	if (err)
		return err;
	nfail = bgs_check_failures(p, n, fails, sizeof(fails));
	free(p);
	if (!nfail)
		return 0;
	if (!force) {
		pr_warn("%s: refusing to send new flows to %s: %u of %u backends failed the %s "
			"check: %s (--force goes ahead, --no-check skips the check)\n",
			rec->name, color_name(to), nfail, n, chk->http_path ? "HTTP" : "TCP",
			fails);
		return BGS_ERR_CHECK;
	}
	pr_warn("%s: going ahead (--force) although %u of %u %s backends failed the check: %s\n",
		rec->name, nfail, n, color_name(to), fails);
	if (au)
		snprintf(au->detail, sizeof(au->detail), "forced past failed checks: %.200s",
			 fails);
	return 0;
}
