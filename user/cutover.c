// SPDX-License-Identifier: GPL-2.0
/* cutover.c: `flip`, `shift`, `rollout`, `rollback`, `check` and `drain`: the switch between
 * colors (wholly or by share), the checks before it, the guard after it, and waiting for the old
 * color to drain.
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

/* "blue", "green" or "green 12.5%": a share as messages and the audit trail name it. */
static const char *share_desc(__u32 share, char *buf, size_t len)
{
	char pct[16];

	if (share_color(share) != BGS_COLOR_NONE)
		snprintf(buf, len, "%s", color_name(share_color(share)));
	else
		snprintf(buf, len, "green %s", fmt_share(share, pct, sizeof(pct)));
	return buf;
}

/* Set the green share of a service: the checks of the color that gains, then the one switch
 * write, then the audit record. *changed says whether anything was written.
 */
static int switch_share(struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u32 share,
			const struct bgs_check_opts *chk, bool force, struct bgs_audit *au,
			bool *changed)
{
	struct bgs_switch sw = switch_read(st, svc);
	__u32 from = sw.share;
	char f[24], t[24];
	struct bgs_set set;
	__u8 gain;
	int err;

	*changed = false;
	share_desc(from, f, sizeof(f));
	share_desc(share, t, sizeof(t));
	snprintf(au->from, sizeof(au->from), "%s", f);
	snprintf(au->to, sizeof(au->to), "%s", t);
	au->gen_before = au->gen_after = sw.generation;
	if (share == from) {
		pr_info("%s: already %s (generation %u)\n", rec->name, t, sw.generation);
		au->service[0] = '\0'; /* nothing changed: nothing for the trail */
		return 0;
	}
	gain = share > from ? BGS_GREEN : BGS_BLUE;
	err = set_read(st, svc, gain, &set);
	if (err)
		return err;
	if (!set_takes_flows(st, &set)) {
		pr_warn("%s of '%s' has no backends%s; refusing to send new flows there\n",
			color_name(gain), rec->name, set.count ? " of weight above 0" : "");
		return -ENOENT;
	}
	err = switch_checks(st, svc, rec, gain, chk, force, au);
	if (err)
		return err;
	fault_point("flip-before-write");
	sw.prev_share = from;
	sw.share = share;
	/* until the color that lost all its share has no live flows left */
	sw.flags |= BGS_SW_DRAINING | BGS_SW_HAS_PREV;
	sw.generation++;
	switch_write(st, svc, sw);
	*changed = true;
	fault_point("flip-after-write");
	au->gen_after = sw.generation;
	audit_record(au, 0);
	pr_info("%s: %s -> %s (generation %u)\n", rec->name, f, t, sw.generation);
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
		if (share_color(sw.share) != !color) {
			pr_warn("%s: %s takes new flows again (generation %u): it will not drain\n",
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
	struct bgs_local_count local_base, local_cur; /* local clients' sockets (no replies seen) */
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
		if (bpf_map_lookup_elem(st->fd[BGS_M_LOCAL_COUNTS], &g[i].slot,
					base ? &g[i].local_base : &g[i].local_cur))
			return -errno;
	}
	return 0;
}

/* Roll the change back to the share `back` after the guard's verdict: under the lock, and only
 * if nobody changed the service since (the generation is still ours).
 */
static int guard_rollback(struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
			  __u32 back, __u32 gen, const char *why, const char *reason)
{
	struct bgs_audit au;
	struct bgs_switch sw;
	char t[24];
	int err;

	/* A trail that cannot be written now does not stop the rollback (it warns). */
	audit_open(&au, "rollback", reason);
	err = state_lock(&st->lock_fd);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec->name);
	sw = switch_read(st, svc);
	share_desc(sw.share, au.from, sizeof(au.from));
	share_desc(back, t, sizeof(t));
	snprintf(au.to, sizeof(au.to), "%s", t);
	snprintf(au.detail, sizeof(au.detail), "guard: %s", why);
	au.gen_before = sw.generation;
	if (sw.generation != gen) {
		pr_warn("guard: %s, but %s changed since (generation %u, not %u): not rolling "
			"back\n",
			why, rec->name, sw.generation, gen);
		err = BGS_ERR_GENERATION;
		goto out;
	}
	sw.prev_share = sw.share;
	sw.share = back;
	sw.flags |= BGS_SW_DRAINING | BGS_SW_HAS_PREV;
	sw.generation++;
	switch_write(st, svc, sw);
	au.gen_after = sw.generation;
	audit_record(&au, 0);
	pr_warn("guard: %s; rolled %s back to %s (generation %u)\n", why, rec->name, t,
		sw.generation);
	err = BGS_ERR_GUARD;
out:
	audit_record(&au, err == BGS_ERR_GUARD ? 0 : err);
	audit_close(&au);
	if (st->lock_fd >= 0)
		close(st->lock_fd);
	st->lock_fd = -1;
	return err;
}

/* Watch the backends of `color` for g->duration_ns after a change (made at generation gen) that
 * sent it new flows, and roll back to the share `back` when they send resets, stay silent, or
 * get no new flow at all.
 */
static int guard_run(struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u8 color,
		     __u32 back, __u32 gen, const struct guard_opts *g, const char *reason)
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
			/* a local client's connection is a new flow too, but its packets never
			 * cross the data plane: it counts as traffic, not for silence
			 */
			news += gb[i].cur.new_flows - gb[i].base.new_flows +
				gb[i].local_cur.opened - gb[i].local_base.opened;
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
	err = guard_rollback(st, svc, rec, back, gen, why, reason);
out:
	free(gb);
	return err;
}

/* ---- flip, shift, rollout and rollback ---- */

/* The options the changing commands share; each command allows a subset (CUT_*). */
struct cut_opts {
	struct bgs_check_opts chk;
	struct guard_opts g;
	bool force, wait, guard_steps;
	__u64 timeout_ns, interval_ns;
	__s64 if_gen;
	const char *reason, *steps;
};

#define CUT_CHECKS 0x1 /* --check-http, --check-timeout, --no-check, --force */
#define CUT_GUARD 0x2 /* --guard D and its thresholds */
#define CUT_WAIT 0x4 /* --wait-drain, --timeout */
#define CUT_ROLLOUT 0x8 /* --steps, --interval, --guard without a duration, thresholds */

static const struct option cut_options[] = {
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
	{ "steps", required_argument, NULL, 's' },
	{ "interval", required_argument, NULL, 'i' },
	{ "help", no_argument, NULL, 'h' },
	{ 0 },
};

/* Which CUT_* group an option belongs to (0: every command has it). */
static unsigned int cut_group(int c)
{
	switch (c) {
	case 'H':
	case 'T':
	case 'n':
	case 'f':
		return CUT_CHECKS;
	case 'g':
		return CUT_GUARD | CUT_ROLLOUT;
	case 'R':
	case 'P':
	case 'S':
	case 'N':
		return CUT_GUARD | CUT_ROLLOUT;
	case 'w':
	case 't':
		return CUT_WAIT;
	case 's':
	case 'i':
		return CUT_ROLLOUT;
	default:
		return 0;
	}
}

/* Options that would be ignored are refused: an operator who wrote them meant something. */
static int cut_opts_check(const struct cut_opts *o, bool timeout_set, int thresholds)
{
	static const char *const names[] = { ['R'] = "--max-resets",
					     ['P'] = "--max-reset-ratio",
					     ['S'] = "--max-silent-backends",
					     ['N'] = "--min-new-flows" };

	if (o->chk.skip && o->chk.http_path) {
		pr_warn("--no-check and --check-http contradict each other\n");
		return -EINVAL;
	}
	if (timeout_set && !o->wait) {
		pr_warn("--timeout is how long --wait-drain waits: it needs --wait-drain\n");
		return -EINVAL;
	}
	if (thresholds && !o->g.duration_ns && !o->guard_steps) {
		pr_warn("%s is a threshold of the guard: it needs --guard\n", names[thresholds]);
		return -EINVAL;
	}
	return 0;
}

/* Parse the options of a changing command. Returns 1 after printing help, 0, or -EINVAL. */
static int cut_getopt(int argc, char **argv, unsigned int allowed, void (*usage)(void),
		      struct cut_opts *o)
{
	/* rollout's --guard is a switch: the guard watches every step's interval */
	static const struct option rollout_guard = { "guard", no_argument, NULL, 'g' };
	struct option opts[sizeof(cut_options) / sizeof(cut_options[0])];
	bool timeout_set = false;
	int c, thresholds = 0;
	size_t i, n = 0;
	__u32 v;

	for (i = 0; cut_options[i].name; i++) {
		if (cut_group(cut_options[i].val) && !(cut_group(cut_options[i].val) & allowed))
			continue;
		opts[n] = cut_options[i];
		if (opts[n].val == 'g' && (allowed & CUT_ROLLOUT))
			opts[n] = rollout_guard;
		n++;
	}
	memset(&opts[n], 0, sizeof(opts[n]));
	memset(o, 0, sizeof(*o));
	o->chk.timeout_ns = BGS_CHECK_TIMEOUT_NS;
	o->g.max_resets = GUARD_MAX_RESETS;
	o->g.max_reset_ratio = GUARD_MAX_RESET_RATIO;
	o->g.min_new_flows = GUARD_MIN_NEW_FLOWS;
	o->g.max_silent = GUARD_MAX_SILENT;
	o->timeout_ns = DRAIN_TIMEOUT_NS;
	o->if_gen = -1;

	while ((c = getopt_cmd(argc, argv,
			       (allowed & CUT_ROLLOUT) ? "H:T:nfgR:P:S:N:wt:G:m:s:i:h" :
							 "H:T:nfg:R:P:S:N:wt:G:m:s:i:h",
			       opts)) != -1) {
		if (c != '?' && cut_group(c) && !(cut_group(c) & allowed)) {
			pr_warn("unknown option '-%c' (see 'bgswitch %s --help')\n", c,
				bgs_cmd_name);
			return -EINVAL;
		}
		if (c == 't')
			timeout_set = true;
		if (c == 'R' || c == 'P' || c == 'S' || c == 'N')
			thresholds = c;
		switch (c) {
		case 'H':
			if (check_http_path(optarg))
				return -EINVAL;
			o->chk.http_path = optarg;
			break;
		case 'T':
			if (parse_check_timeout(optarg, &o->chk.timeout_ns))
				return -EINVAL;
			break;
		case 'n':
			o->chk.skip = true;
			break;
		case 'f':
			o->force = true;
			break;
		case 'g':
			if (allowed & CUT_ROLLOUT) {
				o->guard_steps = true;
				break;
			}
			if (!optarg || parse_duration_ns(optarg, NS, 3600 * NS, &o->g.duration_ns))
				return -EINVAL;
			break;
		case 'R':
			if (parse_count(optarg, "--max-resets", &v))
				return -EINVAL;
			o->g.max_resets = v;
			break;
		case 'P':
			if (parse_ratio(optarg, &o->g.max_reset_ratio))
				return -EINVAL;
			break;
		case 'S':
			if (parse_count(optarg, "--max-silent-backends", &o->g.max_silent))
				return -EINVAL;
			break;
		case 'N':
			if (parse_count(optarg, "--min-new-flows", &v))
				return -EINVAL;
			o->g.min_new_flows = v;
			break;
		case 'w':
			o->wait = true;
			break;
		case 't':
			if (parse_duration_ns(optarg, 0, MAX_WAIT_NS, &o->timeout_ns))
				return -EINVAL;
			break;
		case 'G':
			if (parse_generation(optarg, &o->if_gen))
				return -EINVAL;
			break;
		case 'm':
			if (audit_check_reason(optarg))
				return -EINVAL;
			o->reason = optarg;
			break;
		case 's':
			o->steps = optarg;
			break;
		case 'i':
			if (parse_duration_ns(optarg, NS, 24 * 3600 * NS, &o->interval_ns))
				return -EINVAL;
			break;
		case 'h':
			usage();
			return 1;
		default:
			return -EINVAL;
		}
	}
	return cut_opts_check(o, timeout_set, thresholds);
}

/* What flip, shift and rollback have in common: open the state under the lock, find the
 * service, check the generation, set the share `want(sw)` picks, then guard and wait.
 */
typedef int (*share_fn)(const struct bgs_service *rec, struct bgs_switch sw, void *ctx,
			__u32 *share, bool quiet);

static int cut_run(const char *action, const char *name, struct cut_opts *o, share_fn want,
		   void *ctx)
{
	struct bgs_state st = { .lock_fd = -1 };
	struct bgs_audit au = { .fd = -1 };
	bool changed = false, opened = false;
	struct bgs_service rec;
	struct bgs_switch sw;
	__u32 svc, share = 0;
	int err, want_err;

	err = state_need_root();
	if (err)
		return err;
	err = audit_open(&au, action, o->reason);
	if (err)
		return err;
	err = state_open_maps(&st, true, BGS_MAPS_CUTOVER);
	if (err)
		goto out;
	opened = true;
	err = service_find(&st, name, &svc, &rec);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec.name);
	sw = switch_read(&st, svc);
	au.gen_before = sw.generation;
	share_desc(sw.share, au.from, sizeof(au.from));
	err = generation_check(&st, svc, rec.name, o->if_gen);
	/* What the change would be names the audit record's target even when refused. */
	want_err = want(&rec, sw, ctx, &share, err != 0);
	if (!want_err)
		share_desc(share, au.to, sizeof(au.to));
	if (!err)
		err = want_err;
	if (!err && o->wait && share_color(share) == BGS_COLOR_NONE) {
		pr_warn("%s: at a split both colors take new flows: neither drains (--wait-drain)\n",
			rec.name);
		err = -EINVAL;
	}
	if (!err)
		err = switch_share(&st, svc, &rec, share, &o->chk, o->force, &au, &changed);
	if (err)
		goto out;
	/* The change is made: let other operators in while we watch. */
	close(st.lock_fd);
	st.lock_fd = -1;
	if (o->g.duration_ns && changed)
		err = guard_run(&st, svc, &rec, share > sw.share ? BGS_GREEN : BGS_BLUE, sw.share,
				au.gen_after, &o->g, o->reason);
	if (!err && o->wait)
		err = drain_wait(&st, svc, rec.name, !share_color(share), o->timeout_ns, NS);
out:
	audit_record(&au, err);
	audit_close(&au);
	if (opened)
		state_close(&st);
	return err;
}

#define GUARD_HELP                                                                           \
	"  -R, --max-resets N           its backends send more than N resets (default %d)\n" \
	"  -P, --max-reset-ratio R      and more than R resets per new flow (default %g)\n"  \
	"  -S, --max-silent-backends N  more than N backends take new flows but send\n"      \
	"                               nothing back for a second (default %d)\n"            \
	"  -N, --min-new-flows N        it gets fewer than N new flows in D (default %d)\n"
#define CHECK_HELP                                                               \
	"  -H, --check-http PATH      probe with GET PATH (2xx or 3xx passes)\n" \
	"  -T, --check-timeout D      probe timeout (default 1s)\n"              \
	"  -n, --no-check             do not probe\n"                            \
	"  -f, --force                go ahead although probes failed\n"
#define GEN_HELP                                                                       \
	"  -G, --if-generation G      change only if the service is at generation G\n" \
	"  -m, --reason TEXT          why, for the audit trail\n"                      \
	"  -h, --help                 this help\n"

static void flip_usage(void)
{
	printf("Usage: bgswitch flip NAME [blue|green] [options]\n"
	       "\n"
	       "Send every new flow of NAME to the given color (by default the other one) with\n"
	       "one 8-byte write. Flows already open keep draining to the color they began on.\n"
	       "First, every backend of that color is probed from this node (a TCP connect, or\n"
	       "an HTTP GET); the flip is refused if one fails.\n"
	       "\n" CHECK_HELP
	       "  -g, --guard D              then watch the new color for D and roll back when:\n" GUARD_HELP
	       "  -w, --wait-drain           then wait until the old color has no live flow\n"
	       "  -t, --timeout D            how long to wait for it (default 15m)\n" GEN_HELP "\n"
	       "Exit status: 0 done, 3 a probe failed, 4 the guard rolled back, 5 the old color\n"
	       "did not drain in time, 6 the generation did not match, 1 any other error.\n",
	       GUARD_MAX_RESETS, GUARD_MAX_RESET_RATIO, GUARD_MAX_SILENT, GUARD_MIN_NEW_FLOWS);
}

static int want_flip(const struct bgs_service *rec, struct bgs_switch sw, void *ctx, __u32 *share,
		     bool quiet)
{
	__u8 to = *(__u8 *)ctx, from = share_color(sw.share);
	char pct[16];

	if (to == BGS_COLOR_NONE && from == BGS_COLOR_NONE) {
		if (!quiet)
			pr_warn("'%s' is split (green %s): say which color to flip to\n", rec->name,
				fmt_share(sw.share, pct, sizeof(pct)));
		return -EINVAL;
	}
	if (to == BGS_COLOR_NONE)
		to = !from;
	*share = to == BGS_GREEN ? BGS_SHARE_ALL : 0;
	return 0;
}

int do_flip(int argc, char **argv)
{
	__u8 to = BGS_COLOR_NONE;
	struct cut_opts o;
	int err;

	if (fleet_wanted(argc, argv))
		return fleet_flip(argc, argv);
	err = cut_getopt(argc, argv, CUT_CHECKS | CUT_GUARD | CUT_WAIT, flip_usage, &o);
	if (err)
		return err > 0 ? 0 : err;
	if (argc - optind < 1 || argc - optind > 2)
		return bad_args("flip");
	if (argc - optind == 2 && parse_color(argv[optind + 1], &to))
		return -EINVAL;
	return cut_run("flip", argv[optind], &o, want_flip, &to);
}

static void shift_usage(void)
{
	printf("Usage: bgswitch shift NAME blue|green PERCENT [options]\n"
	       "\n"
	       "Send PERCENT of the new flows of NAME (0%% to 100%%, in steps of 0.01%%) to the\n"
	       "color, the rest to the other one, with one 8-byte write. A flow's color follows\n"
	       "from a hash of its addresses and ports, so raising a color's share only adds\n"
	       "flows to it: a client connection that went there at 5%% would go there at 25%%.\n"
	       "Flows already open stay where they are. 100%% is a flip, 0%% a flip the other\n"
	       "way. The color that gains is probed first, as by flip.\n"
	       "\n" CHECK_HELP
	       "  -g, --guard D              then watch the color that gained for D and roll\n"
	       "                             back when:\n" GUARD_HELP
	       "  -w, --wait-drain           at 0%% or 100%%: then wait until the other color has\n"
	       "                             no live flow\n"
	       "  -t, --timeout D            how long to wait for it (default 15m)\n" GEN_HELP "\n"
	       "Exit status as for flip.\n",
	       GUARD_MAX_RESETS, GUARD_MAX_RESET_RATIO, GUARD_MAX_SILENT, GUARD_MIN_NEW_FLOWS);
}

struct shift_ctx {
	__u8 color;
	__u32 pct; /* the color's share, 0.01 % units */
};

static int want_shift(const struct bgs_service *rec, struct bgs_switch sw, void *ctx, __u32 *share,
		      bool quiet)
{
	struct shift_ctx *x = ctx;

	(void)rec;
	(void)sw;
	(void)quiet;
	*share = x->color == BGS_GREEN ? x->pct : BGS_SHARE_ALL - x->pct;
	return 0;
}

int do_shift(int argc, char **argv)
{
	struct shift_ctx x;
	struct cut_opts o;
	int err;

	if (fleet_wanted(argc, argv))
		return fleet_shift(argc, argv);
	err = cut_getopt(argc, argv, CUT_CHECKS | CUT_GUARD | CUT_WAIT, shift_usage, &o);
	if (err)
		return err > 0 ? 0 : err;
	if (argc - optind != 3)
		return bad_args("shift");
	if (parse_color(argv[optind + 1], &x.color) || parse_share(argv[optind + 2], &x.pct))
		return -EINVAL;
	return cut_run("shift", argv[optind], &o, want_shift, &x);
}

static void rollback_usage(void)
{
	printf("Usage: bgswitch rollback NAME [options]\n"
	       "\n"
	       "Undo the last flip or shift: new flows go back to where they went before it, with\n"
	       "the same one write, after the same probes of the color that gains.\n"
	       "\n" CHECK_HELP GEN_HELP);
}

static int want_rollback(const struct bgs_service *rec, struct bgs_switch sw, void *ctx,
			 __u32 *share, bool quiet)
{
	(void)ctx;
	if (!(sw.flags & BGS_SW_HAS_PREV)) {
		if (!quiet)
			pr_warn("'%s' has not been flipped: nothing to roll back\n", rec->name);
		return -ENOENT;
	}
	*share = sw.prev_share;
	return 0;
}

int do_rollback(int argc, char **argv)
{
	struct cut_opts o;
	int err;

	if (fleet_wanted(argc, argv))
		return fleet_rollback(argc, argv);
	err = cut_getopt(argc, argv, CUT_CHECKS, rollback_usage, &o);
	if (err)
		return err > 0 ? 0 : err;
	if (argc - optind != 1)
		return bad_args("rollback");
	return cut_run("rollback", argv[optind], &o, want_rollback, NULL);
}

static void rollout_usage(void)
{
	printf("Usage: bgswitch rollout NAME [blue|green] --steps P,P,... --interval D [options]\n"
	       "\n"
	       "Move new flows of NAME to the color (by default the one that gets none) in steps:\n"
	       "each step is a shift to the next percentage, held for the interval. With --guard\n"
	       "the color's backends are watched through every interval, and when they trip a\n"
	       "threshold the service is rolled back to where it was before the rollout and the\n"
	       "rollout stops. A probe that fails at a later step rolls back too. A change made\n"
	       "by someone else in between stops the rollout where it is.\n"
	       "\n"
	       "  -s, --steps P,P,...        rising percentages, like 5,25,50,100\n"
	       "  -i, --interval D           how long each step is held (like 30s or 5m)\n"
	       "  -g, --guard                watch every step and roll back when:\n" GUARD_HELP
		       CHECK_HELP GEN_HELP "\n"
	       "Exit status: 0 done, 3 a probe failed, 4 the guard rolled back, 6 the service\n"
	       "was changed by someone else, 1 any other error.\n",
	       GUARD_MAX_RESETS, GUARD_MAX_RESET_RATIO, GUARD_MAX_SILENT, GUARD_MIN_NEW_FLOWS);
}

#define ROLLOUT_MAX_STEPS 100

/* "5,25,50,100" into rising shares (0.01 % units). */
static int parse_steps(const char *s, __u32 *steps, __u32 *n)
{
	char buf[1024], *tok, *next;

	*n = 0;
	if (strlen(s) >= sizeof(buf)) {
		pr_warn("--steps is too long\n");
		return -EINVAL;
	}
	snprintf(buf, sizeof(buf), "%s", s);
	/* strsep, not strtok: "5,,10" or a trailing comma is an empty step, refused. */
	for (next = buf; (tok = strsep(&next, ","));) {
		if (!*tok) {
			pr_warn("--steps '%s' has an empty step\n", s);
			return -EINVAL;
		}
		if (*n == ROLLOUT_MAX_STEPS) {
			pr_warn("--steps: at most %d steps\n", ROLLOUT_MAX_STEPS);
			return -EINVAL;
		}
		if (parse_share(tok, &steps[*n]))
			return -EINVAL;
		if (!steps[*n] || (*n && steps[*n] <= steps[*n - 1])) {
			pr_warn("--steps '%s': percentages must rise, from above 0%%\n", s);
			return -EINVAL;
		}
		(*n)++;
	}
	if (!*n) {
		pr_warn("--steps '%s' names no step\n", s);
		return -EINVAL;
	}
	return 0;
}

/* Hold a step for the interval, watching that nobody else changes the service. */
static int rollout_hold(const struct bgs_state *st, __u32 svc, const char *name, __u32 gen,
			__u64 interval_ns)
{
	__u64 t0 = now_ns(), t;
	struct bgs_switch sw;

	for (t = t0 + NS;; t += NS) {
		sleep_until_ns(t < t0 + interval_ns ? t : t0 + interval_ns);
		sw = switch_read(st, svc);
		if (sw.generation != gen) {
			pr_warn("rollout: %s was changed by someone else (generation %u, not %u): "
				"stopped here\n",
				name, sw.generation, gen);
			return BGS_ERR_GENERATION;
		}
		if (t >= t0 + interval_ns)
			return 0;
	}
}

int do_rollout(int argc, char **argv)
{
	struct bgs_state st = { .lock_fd = -1 };
	__u32 steps[ROLLOUT_MAX_STEPS], nsteps, svc, start, share, gen, i;
	struct bgs_service rec;
	struct bgs_switch sw;
	struct bgs_audit au;
	struct cut_opts o;
	__u8 to = BGS_COLOR_NONE;
	bool changed, opened = false;
	char pct[16];
	int err;

	err = cut_getopt(argc, argv, CUT_CHECKS | CUT_ROLLOUT, rollout_usage, &o);
	if (err)
		return err > 0 ? 0 : err;
	if (argc - optind < 1 || argc - optind > 2)
		return bad_args("rollout");
	if (argc - optind == 2 && parse_color(argv[optind + 1], &to))
		return -EINVAL;
	if (!o.steps || !o.interval_ns) {
		pr_warn("rollout needs --steps and --interval\n");
		return -EINVAL;
	}
	if (parse_steps(o.steps, steps, &nsteps))
		return -EINVAL;
	o.g.duration_ns = o.interval_ns;
	err = state_need_root();
	if (err)
		return err;
	err = state_open(&st, false);
	if (err)
		return err;
	opened = true;
	err = service_find(&st, argv[optind], &svc, &rec);
	if (err)
		goto out;
	sw = switch_read(&st, svc);
	start = sw.share;
	gen = sw.generation;
	if (to == BGS_COLOR_NONE && share_color(start) == BGS_COLOR_NONE) {
		pr_warn("'%s' is split (green %s): say which color to roll out\n", rec.name,
			fmt_share(start, pct, sizeof(pct)));
		err = -EINVAL;
		goto out;
	}
	if (to == BGS_COLOR_NONE)
		to = !share_color(start);
	if (o.if_gen >= 0 && o.if_gen != gen) {
		pr_warn("%s is at generation %u, not %lld: nothing changed\n", rec.name, gen,
			(long long)o.if_gen);
		err = BGS_ERR_GENERATION;
		goto out;
	}
	for (i = 0; i < nsteps; i++) {
		share = to == BGS_GREEN ? steps[i] : BGS_SHARE_ALL - steps[i];
		if ((to == BGS_GREEN && share <= start) || (to == BGS_BLUE && share >= start)) {
			pr_warn("--steps: %s already gets %s of new flows; a step must be above\n",
				color_name(to),
				fmt_share(to == BGS_GREEN ? start : BGS_SHARE_ALL - start, pct,
					  sizeof(pct)));
			err = -EINVAL;
			goto out;
		}
	}
	for (i = 0; i < nsteps; i++) {
		share = to == BGS_GREEN ? steps[i] : BGS_SHARE_ALL - steps[i];
		err = audit_open(&au, "rollout", o.reason);
		if (err)
			goto out;
		snprintf(au.service, sizeof(au.service), "%s", rec.name);
		err = state_lock(&st.lock_fd);
		if (!err && switch_read(&st, svc).generation != gen) {
			pr_warn("rollout: %s was changed by someone else: stopped here\n",
				rec.name);
			err = BGS_ERR_GENERATION;
		}
		if (!err)
			err = switch_share(&st, svc, &rec, share, &o.chk, o.force, &au, &changed);
		if (st.lock_fd >= 0)
			close(st.lock_fd);
		st.lock_fd = -1;
		audit_record(&au, err);
		audit_close(&au);
		if (err == BGS_ERR_CHECK && i > 0) {
			/* a later step's probe failed: back to where the rollout began */
			err = guard_rollback(&st, svc, &rec, start, gen, "a probe failed",
					     o.reason);
			if (err == BGS_ERR_GUARD)
				err = BGS_ERR_CHECK;
			else if (err != BGS_ERR_GENERATION)
				pr_warn("rollout: %s was not rolled back: %s\n", rec.name,
					strerror(-err));
		}
		if (err)
			goto out;
		gen = switch_read(&st, svc).generation;
		pr_info("rollout %s: step %u/%u, %s %s of new flows (generation %u)\n", rec.name,
			i + 1, nsteps, color_name(to), fmt_share(steps[i], pct, sizeof(pct)), gen);
		fflush(stdout);
		if (o.guard_steps)
			err = guard_run(&st, svc, &rec, to, start, gen, &o.g, o.reason);
		else if (i + 1 < nsteps)
			err = rollout_hold(&st, svc, rec.name, gen, o.interval_ns);
		if (err)
			goto out;
	}
	pr_info("rollout %s: done, %s %s of new flows\n", rec.name, color_name(to),
		fmt_share(steps[nsteps - 1], pct, sizeof(pct)));
out:
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

	while ((c = getopt_cmd(argc, argv, "H:T:h", opts)) != -1) {
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

	while ((c = getopt_cmd(argc, argv, "t:i:h", opts)) != -1) {
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
	if (!err && share_color(switch_read(&st, svc).share) == BGS_COLOR_NONE) {
		pr_warn("'%s' is split between colors: both take new flows, neither drains\n",
			rec.name);
		err = -EINVAL;
	}
	if (!err)
		err = drain_wait(&st, svc, rec.name, !share_color(switch_read(&st, svc).share),
				 timeout_ns, interval * MS);
	state_close(&st);
	return err;
}
