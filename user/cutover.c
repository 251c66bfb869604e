// SPDX-License-Identifier: GPL-2.0
/* cutover.c: `flip`, `rollback`, `check` and `drain`: the switch between colors, the checks
 * before it, the guard after it, and waiting for the old color to drain.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>

#include "audit.h"
#include "commands.h"
#include "fleet.h"
#include "log.h"
#include "probe.h"
#include "state.h"
#include "util.h"

#define NS 1000000000ULL
#define MS 1000000ULL
#define DRAIN_TIMEOUT_NS (15ULL * 60 * NS) /* --timeout default: TCP's default idle timeout */
#define MAX_WAIT_NS (7ULL * 24 * 3600 * NS)

/* Guard defaults (bgswitch(8), flip). */
#define GUARD_MAX_RESETS 10
#define GUARD_MAX_RESET_RATIO 0.1
#define GUARD_MIN_NEW_FLOWS 1
#define GUARD_MAX_SILENT 0

struct guard_opts {
	__u64 duration_ns; /* 0: no guard */
	__u64 max_resets;
	double max_reset_ratio;
	__u64 min_new_flows;
	__u32 max_silent;
};

static int parse_check_timeout(const char *s, __u64 *out)
{
	return parse_duration_ns(s, 10 * MS, 60 * NS, out);
}

static int parse_ratio(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (!*s || *end || errno || !isfinite(v) || v < 0 || v > 1000) {
		pr_warn("--max-reset-ratio '%s' is not a ratio from 0 to 1000 (like 0.1)\n", s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int parse_count(const char *s, const char *opt, __u32 *out)
{
	if (parse_u32(s, 0, 1000000000U, out)) {
		pr_warn("%s '%s' is not a number from 0 to 1000000000\n", opt, s);
		return -EINVAL;
	}
	return 0;
}

/* ---- checks ---- */

/* Probe every backend of a color. With print, one line per backend on stdout. Fills *nfail and
 * a list of the failures ("ADDR (why), ..."). Returns 0 or -errno.
 */
static int check_color(const struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
		       __u8 color, const struct bgs_check_opts *chk, bool print, char *fails,
		       size_t flen, __u32 *nfail, __u32 *ntotal)
{
	struct bgs_probe *p = NULL;
	char ebuf[BGS_ADDRSTR_LEN];
	struct bgs_backend be;
	struct bgs_set set;
	size_t used = 0;
	__u32 i, n = 0;
	int err;

	*nfail = *ntotal = 0;
	fails[0] = '\0';
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
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &set.slot[i], &be))
			continue;
		memcpy(p[n].ep.addr, be.addr, sizeof(be.addr));
		p[n].ep.port = be.port;
		p[n].ep.family = be.family;
		n++;
	}
	err = probe_run(p, n, chk->http_path, chk->timeout_ns);
	if (err) {
		pr_warn("cannot probe the backends: %s\n", strerror(-err));
		goto out;
	}
	for (i = 0; i < n; i++) {
		fmt_endpoint(p[i].ep.addr, p[i].ep.port, p[i].ep.family, ebuf, sizeof(ebuf));
		if (print && p[i].ok)
			printf("%-5s %-24s ok      %s, %.1f ms\n", color_name(color), ebuf,
			       chk->http_path ? "http" : "tcp connect", p[i].elapsed_ns / 1e6);
		else if (print)
			printf("%-5s %-24s FAILED  %s\n", color_name(color), ebuf, p[i].error);
		if (p[i].ok)
			continue;
		if (used < flen)
			used += snprintf(fails + used, flen - used, "%s%s (%s)",
					 (*nfail) ? ", " : "", ebuf, p[i].error);
		(*nfail)++;
	}
	*ntotal = n;
out:
	free(p);
	return err;
}

/* The checks before a switch: every backend of `to` must pass, unless --force. */
static int switch_checks(const struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
			 __u8 to, const struct bgs_check_opts *chk, bool force,
			 struct bgs_audit *au)
{
	__u32 nfail, ntotal;
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
	err = check_color(st, svc, rec, to, chk, false, fails, sizeof(fails), &nfail, &ntotal);
	if (err || !nfail)
		return err;
	if (!force) {
		pr_warn("%s: refusing to send new flows to %s: %u of %u backends failed the %s "
			"check: %s (--force goes ahead, --no-check skips the check)\n",
			rec->name, color_name(to), nfail, ntotal, chk->http_path ? "HTTP" : "TCP",
			fails);
		return BGS_ERR_CHECK;
	}
	pr_warn("%s: going ahead (--force) although %u of %u %s backends failed the check: %s\n",
		rec->name, nfail, ntotal, color_name(to), fails);
	snprintf(au->detail, sizeof(au->detail), "forced past failed checks: %.200s", fails);
	return 0;
}

/* Make `to` the active color of a service: the checks, then the one switch write, then the
 * audit record. *changed says whether anything was written.
 */
static int switch_color(struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u8 to,
			const struct bgs_check_opts *chk, bool force, struct bgs_audit *au,
			bool *changed)
{
	struct bgs_switch sw = switch_read(st, svc);
	struct bgs_set set;
	__u8 from = sw.active;
	int err;

	*changed = false;
	snprintf(au->from, sizeof(au->from), "%s", color_name(from));
	snprintf(au->to, sizeof(au->to), "%s", color_name(to));
	au->gen_before = au->gen_after = sw.generation;
	if (to == from) {
		pr_info("%s: already %s (generation %u)\n", rec->name, color_name(to),
			sw.generation);
		au->service[0] = '\0'; /* nothing changed: nothing for the trail */
		return 0;
	}
	err = set_read(st, svc, to, &set);
	if (err)
		return err;
	if (!set.count) {
		pr_warn("%s of '%s' has no backends; refusing to send new flows there\n",
			color_name(to), rec->name);
		return -ENOENT;
	}
	err = switch_checks(st, svc, rec, to, chk, force, au);
	if (err)
		return err;
	fault_point("flip-before-write");
	sw.previous = from;
	sw.active = to;
	sw.flags |= BGS_SW_DRAINING; /* until the previous color has no live flows left */
	sw.generation++;
	switch_write(st, svc, sw);
	*changed = true;
	fault_point("flip-after-write");
	au->gen_after = sw.generation;
	audit_record(au, 0);
	pr_info("%s: %s -> %s (generation %u)\n", rec->name, color_name(from), color_name(to),
		sw.generation);
	fflush(stdout);
	return 0;
}

/* ---- drain ---- */

/* Live flows of one color of a service, counted as `status` counts them. */
static int color_live(const struct bgs_state *st, __u32 svc, __u8 color, __u64 *live)
{
	struct bgs_flow_census *c = malloc(sizeof(*c));
	struct bgs_backend be;
	__u32 slot;
	int err;

	*live = 0;
	if (!c)
		return -ENOMEM;
	err = flows_census(st, c);
	for (slot = 0; !err && slot < BGS_MAX_SLOTS; slot++)
		if (c->live[slot] && !bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be) &&
		    be.state != BGS_BACKEND_FREE && be.svc == svc && be.color == color)
			*live += c->live[slot];
	free(c);
	return err;
}

/* Wait until `color` of the service has no live flow, printing its count every interval. */
static int drain_wait(const struct bgs_state *st, __u32 svc, const char *name, __u8 color,
		      __u64 timeout_ns, __u64 interval_ns)
{
	__u64 t0 = now_ns(), live, elapsed, next;
	struct bgs_service rec;
	struct bgs_switch sw;
	__u64 k;
	int err;

	for (k = 1;; k++) {
		if (!service_get(st, svc, &rec) || strncmp(rec.name, name, BGS_NAME_LEN)) {
			pr_warn("%s was deleted while draining\n", name);
			return -ENOENT;
		}
		sw = switch_read(st, svc);
		if (sw.active == color) {
			pr_warn("%s: %s is the active color again (generation %u): it will not drain\n",
				name, color_name(color), sw.generation);
			return -EBUSY;
		}
		err = color_live(st, svc, color, &live);
		if (err)
			return err;
		elapsed = now_ns() - t0;
		if (!live) {
			pr_info("%s: %s drained, 0 live flows (%.1fs)\n", name, color_name(color),
				elapsed / 1e9);
			return 0;
		}
		pr_info("%s: %s %llu live flows draining (%.1fs)\n", name, color_name(color),
			(unsigned long long)live, elapsed / 1e9);
		fflush(stdout);
		if (elapsed >= timeout_ns) {
			pr_warn("%s: %s still has %llu live flows after %.1fs (--timeout)\n", name,
				color_name(color), (unsigned long long)live, elapsed / 1e9);
			return BGS_ERR_TIMEOUT;
		}
		next = t0 + k * interval_ns;
		sleep_until_ns(next < t0 + timeout_ns ? next : t0 + timeout_ns);
	}
}

/* ---- guard ---- */

struct guard_backend {
	__u32 slot;
	char label[BGS_ADDRSTR_LEN];
	struct bgs_backend_stats base, cur;
	__u64 new_before; /* new_flows at the sample before */
};

static int guard_sample(const struct bgs_state *st, struct guard_backend *g, __u32 n, bool base)
{
	__u32 i;
	int err;

	for (i = 0; i < n; i++) {
		err = percpu_sum(st, BGS_M_BACKEND_STATS, g[i].slot,
				 (__u64 *)(base ? &g[i].base : &g[i].cur),
				 sizeof(struct bgs_backend_stats) / sizeof(__u64));
		if (err)
			return err;
	}
	return 0;
}

/* Roll the flip back after the guard's verdict: under the lock, and only if nobody changed the
 * service since (the generation is still ours).
 */
static int guard_rollback(struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
			  __u8 color, __u8 back, __u32 gen, const char *why, const char *reason)
{
	struct bgs_audit au;
	struct bgs_switch sw;
	int err;

	/* A trail that cannot be written now does not stop the rollback (it warns). */
	audit_open(&au, "rollback", reason);
	err = state_lock(&st->lock_fd);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec->name);
	snprintf(au.from, sizeof(au.from), "%s", color_name(color));
	snprintf(au.to, sizeof(au.to), "%s", color_name(back));
	snprintf(au.detail, sizeof(au.detail), "guard: %s", why);
	sw = switch_read(st, svc);
	au.gen_before = sw.generation;
	if (sw.generation != gen) {
		pr_warn("guard: %s, but %s changed since the flip (generation %u, not %u): not "
			"rolling back\n",
			why, rec->name, sw.generation, gen);
		err = BGS_ERR_GENERATION;
		goto out;
	}
	sw.previous = color;
	sw.active = back;
	sw.flags |= BGS_SW_DRAINING;
	sw.generation++;
	switch_write(st, svc, sw);
	au.gen_after = sw.generation;
	audit_record(&au, 0);
	pr_warn("guard: %s; rolled %s back to %s (generation %u)\n", why, rec->name,
		color_name(back), sw.generation);
	err = BGS_ERR_GUARD;
out:
	audit_record(&au, err == BGS_ERR_GUARD ? 0 : err);
	audit_close(&au);
	if (st->lock_fd >= 0)
		close(st->lock_fd);
	st->lock_fd = -1;
	return err;
}

/* Watch the new color's backends for g->duration_ns after a flip (made at generation gen) and
 * roll back when they send resets, stay silent, or get no new flow at all.
 */
static int guard_run(struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u8 color,
		     __u8 back, __u32 gen, const struct guard_opts *g, const char *reason)
{
	struct guard_backend *gb = NULL;
	__u64 t0, when, news, replies, resets, ticks, k;
	char why[512], silent[384];
	struct bgs_service now_rec;
	struct bgs_backend be;
	struct bgs_switch sw;
	struct bgs_set set;
	__u32 i, n = 0, nsilent;
	size_t used;
	int err;

	why[0] = '\0';
	err = set_read(st, svc, color, &set);
	if (err)
		return err;
	gb = calloc(set.count ? set.count : 1, sizeof(*gb));
	if (!gb)
		return -ENOMEM;
	for (i = 0; i < set.count; i++) {
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &set.slot[i], &be))
			continue;
		gb[n].slot = set.slot[i];
		fmt_endpoint(be.addr, be.port, be.family, gb[n].label, sizeof(gb[n].label));
		n++;
	}
	err = guard_sample(st, gb, n, true);
	if (err)
		goto out;
	for (i = 0; i < n; i++)
		gb[i].new_before = gb[i].base.new_flows;
	t0 = now_ns();
	ticks = (g->duration_ns + NS - 1) / NS;
	for (k = 1; k <= ticks && !why[0]; k++) {
		when = t0 + k * NS < t0 + g->duration_ns ? t0 + k * NS : t0 + g->duration_ns;
		sleep_until_ns(when);
		sw = switch_read(st, svc);
		if (!service_get(st, svc, &now_rec) || sw.generation != gen) {
			pr_warn("guard: %s changed during the guard (generation %u, not %u): stopped "
				"watching, nothing rolled back\n",
				rec->name, sw.generation, gen);
			err = BGS_ERR_GENERATION;
			goto out;
		}
		err = guard_sample(st, gb, n, false);
		if (err)
			goto out;
		news = replies = resets = 0;
		nsilent = 0;
		used = 0;
		silent[0] = '\0';
		for (i = 0; i < n; i++) {
			news += gb[i].cur.new_flows - gb[i].base.new_flows;
			replies += gb[i].cur.tx_packets - gb[i].base.tx_packets;
			resets += gb[i].cur.resets - gb[i].base.resets;
			/* New flows a second ago or more, and not one packet back since the start. */
			if (gb[i].new_before > gb[i].base.new_flows &&
			    gb[i].cur.tx_packets == gb[i].base.tx_packets) {
				if (used < sizeof(silent))
					used += snprintf(silent + used, sizeof(silent) - used,
							 "%s%s", nsilent ? ", " : "", gb[i].label);
				nsilent++;
			}
			gb[i].new_before = gb[i].cur.new_flows;
		}
		pr_info("guard %s %s %llus/%llus: %llu new flows, %llu replies, %llu resets, %u "
			"silent backends\n",
			rec->name, color_name(color),
			(unsigned long long)((when - t0 + NS / 2) / NS), (unsigned long long)ticks,
			(unsigned long long)news, (unsigned long long)replies,
			(unsigned long long)resets, nsilent);
		fflush(stdout);
		if (resets > g->max_resets && (double)resets > g->max_reset_ratio * (double)news)
			snprintf(why, sizeof(why),
				 "%llu resets from %s's backends for %llu new flows (more than "
				 "--max-resets %llu and --max-reset-ratio %g)",
				 (unsigned long long)resets, color_name(color),
				 (unsigned long long)news, (unsigned long long)g->max_resets,
				 g->max_reset_ratio);
		else if (nsilent > g->max_silent)
			snprintf(why, sizeof(why),
				 "%u silent backends (new flows, no reply): %s (more than "
				 "--max-silent-backends %u)",
				 nsilent, silent, g->max_silent);
		else if (k == ticks && news < g->min_new_flows)
			snprintf(
				why, sizeof(why),
				"no traffic: %llu new flows in %llus (fewer than --min-new-flows %llu)",
				(unsigned long long)news, (unsigned long long)ticks,
				(unsigned long long)g->min_new_flows);
	}
	if (!why[0]) {
		pr_info("guard: %s on %s passed\n", rec->name, color_name(color));
		goto out;
	}
	err = guard_rollback(st, svc, rec, color, back, gen, why, reason);
out:
	free(gb);
	return err;
}

/* ---- flip and rollback ---- */

static void flip_usage(void)
{
	printf("Usage: bgswitch flip NAME [blue|green] [options]\n"
	       "\n"
	       "Send every new flow of NAME to the given color (by default the other one) with\n"
	       "one 8-byte write. Flows already open keep draining to the color they began on.\n"
	       "First, every backend of that color is probed from this node (a TCP connect, or\n"
	       "an HTTP GET); the flip is refused if one fails.\n"
	       "\n"
	       "  -H, --check-http PATH      probe with GET PATH (2xx or 3xx passes)\n"
	       "  -T, --check-timeout D      probe timeout (default 1s)\n"
	       "  -n, --no-check             do not probe\n"
	       "  -f, --force                flip although probes failed\n"
	       "  -g, --guard D              then watch the new color for D and roll back when:\n"
	       "  -R, --max-resets N           its backends send more than N resets (default %d)\n"
	       "  -P, --max-reset-ratio R      and more than R resets per new flow (default %g)\n"
	       "  -S, --max-silent-backends N  more than N backends take new flows but send\n"
	       "                               nothing back for a second (default %d)\n"
	       "  -N, --min-new-flows N        it gets fewer than N new flows in D (default %d)\n"
	       "  -w, --wait-drain           then wait until the old color has no live flow\n"
	       "  -t, --timeout D            how long to wait for it (default 15m)\n"
	       "  -G, --if-generation G      flip only if the service is at generation G\n"
	       "  -m, --reason TEXT          why, for the audit trail\n"
	       "  -h, --help                 this help\n"
	       "\n"
	       "Exit status: 0 done, 3 a probe failed, 4 the guard rolled back, 5 the old color\n"
	       "did not drain in time, 6 the generation did not match, 1 any other error.\n",
	       GUARD_MAX_RESETS, GUARD_MAX_RESET_RATIO, GUARD_MAX_SILENT, GUARD_MIN_NEW_FLOWS);
}

int do_flip(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "check-http", required_argument, NULL, 'H' },
		{ "check-timeout", required_argument, NULL, 'T' },
		{ "no-check", no_argument, NULL, 'n' },
		{ "force", no_argument, NULL, 'f' },
		{ "guard", required_argument, NULL, 'g' },
		{ "max-resets", required_argument, NULL, 'R' },
		{ "max-reset-ratio", required_argument, NULL, 'P' },
		{ "max-silent-backends", required_argument, NULL, 'S' },
		{ "min-new-flows", required_argument, NULL, 'N' },
		{ "wait-drain", no_argument, NULL, 'w' },
		{ "timeout", required_argument, NULL, 't' },
		{ "if-generation", required_argument, NULL, 'G' },
		{ "reason", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bgs_check_opts chk = { .timeout_ns = BGS_CHECK_TIMEOUT_NS };
	struct guard_opts g = { .max_resets = GUARD_MAX_RESETS,
				.max_reset_ratio = GUARD_MAX_RESET_RATIO,
				.min_new_flows = GUARD_MIN_NEW_FLOWS,
				.max_silent = GUARD_MAX_SILENT };
	struct bgs_state st = { .lock_fd = -1 };
	struct bgs_audit au = { .fd = -1 };
	__u64 timeout_ns = DRAIN_TIMEOUT_NS;
	bool force = false, wait = false, changed = false, opened = false;
	const char *reason = NULL;
	struct bgs_service rec;
	__u8 to = BGS_COLOR_NONE, from;
	__s64 if_gen = -1;
	__u32 svc, v;
	int c, err;

	if (fleet_wanted(argc, argv))
		return fleet_flip(argc, argv);
	while ((c = getopt_long(argc, argv, "H:T:nfg:R:P:S:N:wt:G:m:h", opts, NULL)) != -1) {
		switch (c) {
		case 'H':
			if (check_http_path(optarg))
				return -EINVAL;
			chk.http_path = optarg;
			break;
		case 'T':
			if (parse_check_timeout(optarg, &chk.timeout_ns))
				return -EINVAL;
			break;
		case 'n':
			chk.skip = true;
			break;
		case 'f':
			force = true;
			break;
		case 'g':
			if (parse_duration_ns(optarg, NS, 3600 * NS, &g.duration_ns))
				return -EINVAL;
			break;
		case 'R':
			if (parse_count(optarg, "--max-resets", &v))
				return -EINVAL;
			g.max_resets = v;
			break;
		case 'P':
			if (parse_ratio(optarg, &g.max_reset_ratio))
				return -EINVAL;
			break;
		case 'S':
			if (parse_count(optarg, "--max-silent-backends", &g.max_silent))
				return -EINVAL;
			break;
		case 'N':
			if (parse_count(optarg, "--min-new-flows", &v))
				return -EINVAL;
			g.min_new_flows = v;
			break;
		case 'w':
			wait = true;
			break;
		case 't':
			if (parse_duration_ns(optarg, 0, MAX_WAIT_NS, &timeout_ns))
				return -EINVAL;
			break;
		case 'G':
			if (parse_generation(optarg, &if_gen))
				return -EINVAL;
			break;
		case 'm':
			if (audit_check_reason(optarg))
				return -EINVAL;
			reason = optarg;
			break;
		case 'h':
			flip_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (argc - optind < 1 || argc - optind > 2)
		return bad_args("flip");
	if (argc - optind == 2 && parse_color(argv[optind + 1], &to))
		return -EINVAL;
	if (chk.skip && chk.http_path) {
		pr_warn("--no-check and --check-http contradict each other\n");
		return -EINVAL;
	}
	err = state_need_root();
	if (err)
		return err;
	err = audit_open(&au, "flip", reason);
	if (err)
		return err;
	err = state_open(&st, true);
	if (err)
		goto out;
	opened = true;
	err = service_find(&st, argv[optind], &svc, &rec);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec.name);
	au.gen_before = switch_read(&st, svc).generation;
	from = switch_read(&st, svc).active;
	if (to == BGS_COLOR_NONE)
		to = !from;
	snprintf(au.from, sizeof(au.from), "%s", color_name(from));
	snprintf(au.to, sizeof(au.to), "%s", color_name(to));
	err = generation_check(&st, svc, rec.name, if_gen);
	if (err)
		goto out;
	err = switch_color(&st, svc, &rec, to, &chk, force, &au, &changed);
	if (err)
		goto out;
	/* The change is made: let other operators in while we watch. */
	close(st.lock_fd);
	st.lock_fd = -1;
	if (g.duration_ns && changed)
		err = guard_run(&st, svc, &rec, to, from, au.gen_after, &g, reason);
	if (!err && wait)
		err = drain_wait(&st, svc, rec.name, !to, timeout_ns, NS);
out:
	audit_record(&au, err);
	audit_close(&au);
	if (opened)
		state_close(&st);
	return err;
}

static void rollback_usage(void)
{
	printf("Usage: bgswitch rollback NAME [options]\n"
	       "\n"
	       "Send new flows back to the color that was active before the last flip: the same\n"
	       "one write as a flip, after the same probes of that color's backends.\n"
	       "\n"
	       "  -H, --check-http PATH   probe with GET PATH (2xx or 3xx passes)\n"
	       "  -T, --check-timeout D   probe timeout (default 1s)\n"
	       "  -n, --no-check          do not probe\n"
	       "  -f, --force             roll back although probes failed\n"
	       "  -G, --if-generation G   roll back only if the service is at generation G\n"
	       "  -m, --reason TEXT       why, for the audit trail\n"
	       "  -h, --help              this help\n");
}

int do_rollback(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "check-http", required_argument, NULL, 'H' },
		{ "check-timeout", required_argument, NULL, 'T' },
		{ "no-check", no_argument, NULL, 'n' },
		{ "force", no_argument, NULL, 'f' },
		{ "if-generation", required_argument, NULL, 'G' },
		{ "reason", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bgs_check_opts chk = { .timeout_ns = BGS_CHECK_TIMEOUT_NS };
	struct bgs_state st = { .lock_fd = -1 };
	struct bgs_audit au = { .fd = -1 };
	bool force = false, changed, opened = false;
	const char *reason = NULL;
	struct bgs_service rec;
	struct bgs_switch sw;
	__s64 if_gen = -1;
	__u32 svc;
	int c, err;

	if (fleet_wanted(argc, argv))
		return fleet_rollback(argc, argv);
	while ((c = getopt_long(argc, argv, "H:T:nfG:m:h", opts, NULL)) != -1) {
		switch (c) {
		case 'H':
			if (check_http_path(optarg))
				return -EINVAL;
			chk.http_path = optarg;
			break;
		case 'T':
			if (parse_check_timeout(optarg, &chk.timeout_ns))
				return -EINVAL;
			break;
		case 'n':
			chk.skip = true;
			break;
		case 'f':
			force = true;
			break;
		case 'G':
			if (parse_generation(optarg, &if_gen))
				return -EINVAL;
			break;
		case 'm':
			if (audit_check_reason(optarg))
				return -EINVAL;
			reason = optarg;
			break;
		case 'h':
			rollback_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (argc - optind != 1)
		return bad_args("rollback");
	if (chk.skip && chk.http_path) {
		pr_warn("--no-check and --check-http contradict each other\n");
		return -EINVAL;
	}
	err = state_need_root();
	if (err)
		return err;
	err = audit_open(&au, "rollback", reason);
	if (err)
		return err;
	err = state_open(&st, true);
	if (err)
		goto out;
	opened = true;
	err = service_find(&st, argv[optind], &svc, &rec);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec.name);
	sw = switch_read(&st, svc);
	au.gen_before = sw.generation;
	snprintf(au.from, sizeof(au.from), "%s", color_name(sw.active));
	if (sw.previous < BGS_NCOLORS)
		snprintf(au.to, sizeof(au.to), "%s", color_name(sw.previous));
	err = generation_check(&st, svc, rec.name, if_gen);
	if (err)
		goto out;
	if (sw.previous >= BGS_NCOLORS) {
		pr_warn("'%s' has not been flipped: nothing to roll back\n", rec.name);
		err = -ENOENT;
		goto out;
	}
	err = switch_color(&st, svc, &rec, sw.previous, &chk, force, &au, &changed);
out:
	audit_record(&au, err);
	audit_close(&au);
	if (opened)
		state_close(&st);
	return err;
}

/* ---- check ---- */

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

int do_check(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "check-http", required_argument, NULL, 'H' },
		{ "check-timeout", required_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bgs_check_opts chk = { .timeout_ns = BGS_CHECK_TIMEOUT_NS };
	struct bgs_service rec;
	struct bgs_state st;
	__u32 svc, nfail, ntotal;
	char fails[512];
	__u8 color;
	int c, err;

	while ((c = getopt_long(argc, argv, "H:T:h", opts, NULL)) != -1) {
		switch (c) {
		case 'H':
			if (check_http_path(optarg))
				return -EINVAL;
			chk.http_path = optarg;
			break;
		case 'T':
			if (parse_check_timeout(optarg, &chk.timeout_ns))
				return -EINVAL;
			break;
		case 'h':
			check_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (argc - optind != 2)
		return bad_args("check");
	if (parse_color(argv[optind + 1], &color))
		return -EINVAL;
	err = state_open(&st, false);
	if (err)
		return err;
	err = service_find(&st, argv[optind], &svc, &rec);
	if (err)
		goto out;
	if (rec.vip.proto != IPPROTO_TCP) {
		pr_warn("'%s' is a UDP service; probes are TCP\n", rec.name);
		err = -EINVAL;
		goto out;
	}
	err = check_color(&st, svc, &rec, color, &chk, true, fails, sizeof(fails), &nfail, &ntotal);
	if (!err && nfail) {
		fflush(stdout);
		pr_warn("%s: %u of %u %s backends failed the %s check\n", rec.name, nfail, ntotal,
			color_name(color), chk.http_path ? "HTTP" : "TCP");
		err = BGS_ERR_CHECK;
	}
out:
	state_close(&st);
	return err;
}

/* ---- drain ---- */

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

int do_drain(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "timeout", required_argument, NULL, 't' },
		{ "interval", required_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	__u64 timeout_ns = DRAIN_TIMEOUT_NS;
	struct bgs_service rec;
	struct bgs_state st;
	__u32 svc, interval = 1000;
	int c, err;

	while ((c = getopt_long(argc, argv, "t:i:h", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (parse_duration_ns(optarg, 0, MAX_WAIT_NS, &timeout_ns))
				return -EINVAL;
			break;
		case 'i':
			if (parse_u32(optarg, 100, 60000, &interval)) {
				pr_warn("--interval must be 100 to 60000 milliseconds\n");
				return -EINVAL;
			}
			break;
		case 'h':
			drain_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (argc - optind != 1)
		return bad_args("drain");
	err = state_open(&st, false);
	if (err)
		return err;
	err = service_find(&st, argv[optind], &svc, &rec);
	if (!err)
		err = drain_wait(&st, svc, rec.name, !switch_read(&st, svc).active, timeout_ns,
				 interval * MS);
	state_close(&st);
	return err;
}
