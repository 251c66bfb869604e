// SPDX-License-Identifier: GPL-2.0
/* guard.c: the guard after a switch: the backends of the color that gained are watched every
 * second, and the switch is rolled back when they send resets, stay silent, or get no new flow.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>

#include "log.h"
#include "ops.h"

#define NS 1000000000ULL

struct guard_backend {
	__u32 slot;
	char label[BGS_ADDRSTR_LEN];
	struct bgs_backend_stats base, cur;
	struct bgs_local_count local_base, local_cur; /* local clients' sockets (no replies seen) */
	__u64 new_before; /* new_flows at the sample before */
};

/* What one second of the guard saw, summed over the color's backends. */
struct guard_tick {
	__u64 news, replies, resets;
	__u32 nsilent;
	char silent[384];
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

/* The backends of color, sampled once as the base of the guard. */
static int guard_setup(const struct bgs_state *st, __u32 svc, __u8 color,
		       struct guard_backend **out, __u32 *nout)
{
	struct guard_backend *gb;
	struct bgs_backend be;
	struct bgs_set set;
	__u32 i, n = 0;
	int err;

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
	if (err) {
		free(gb);
		return err;
	}
	for (i = 0; i < n; i++)
		gb[i].new_before = gb[i].base.new_flows;
	*out = gb;
	*nout = n;
	return 0;
}

/* Sum the samples since the base into t. */
static void guard_sum(struct guard_backend *gb, __u32 n, struct guard_tick *t)
{
	size_t used = 0;
	__u32 i;

	memset(t, 0, sizeof(*t));
	for (i = 0; i < n; i++) {
		/* a local client's connection is a new flow too, but its packets never cross the
		 * data plane: it counts as traffic, not for silence
		 */
		t->news += gb[i].cur.new_flows - gb[i].base.new_flows + gb[i].local_cur.opened -
			   gb[i].local_base.opened;
		t->replies += gb[i].cur.tx_packets - gb[i].base.tx_packets;
		t->resets += gb[i].cur.resets - gb[i].base.resets;
		/* New flows a second ago or more, and not one packet back since the start. */
		if (gb[i].new_before > gb[i].base.new_flows &&
		    gb[i].cur.tx_packets == gb[i].base.tx_packets) {
			if (used < sizeof(t->silent))
				used += snprintf(t->silent + used, sizeof(t->silent) - used, "%s%s",
						 t->nsilent ? ", " : "", gb[i].label);
			t->nsilent++;
		}
		gb[i].new_before = gb[i].cur.new_flows;
	}
}

/* The guard's verdict on what it saw so far (why, empty: nothing wrong). */
static void guard_verdict(const struct guard_tick *t, const struct bgs_guard_opts *g, __u8 color,
			  bool last, __u64 ticks, char *why, size_t len)
{
	if (t->resets > g->max_resets && (double)t->resets > g->max_reset_ratio * (double)t->news)
		snprintf(why, len,
			 "%llu resets from %s's backends for %llu new flows (more than "
			 "--max-resets %llu and --max-reset-ratio %g)",
			 (unsigned long long)t->resets, color_name(color),
			 (unsigned long long)t->news, (unsigned long long)g->max_resets,
			 g->max_reset_ratio);
	else if (t->nsilent > g->max_silent)
		snprintf(why, len,
			 "%u silent backends (new flows, no reply): %s (more than "
			 "--max-silent-backends %u)",
			 t->nsilent, t->silent, g->max_silent);
	else if (last && t->news < g->min_new_flows)
		snprintf(why, len,
			 "no traffic: %llu new flows in %llus (fewer than --min-new-flows %llu)",
			 (unsigned long long)t->news, (unsigned long long)ticks,
			 (unsigned long long)g->min_new_flows);
}

int bgs_guard_run(struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u8 color,
		  __u32 back, __u32 gen, const struct bgs_guard_opts *g, const char *reason)
{
	struct guard_backend *gb = NULL;
	__u64 t0, when, ticks, k;
	struct bgs_service now_rec;
	struct guard_tick t;
	struct bgs_switch sw;
	char why[512] = "";
	__u32 n = 0;
	int err;

	err = guard_setup(st, svc, color, &gb, &n);
	if (err)
		return err;
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
		guard_sum(gb, n, &t);
		pr_info("guard %s %s %llus/%llus: %llu new flows, %llu replies, %llu resets, %u "
			"silent backends\n",
			rec->name, color_name(color),
			(unsigned long long)((when - t0 + NS / 2) / NS), (unsigned long long)ticks,
			(unsigned long long)t.news, (unsigned long long)t.replies,
			(unsigned long long)t.resets, t.nsilent);
		fflush(stdout);
		guard_verdict(&t, g, color, k == ticks, ticks, why, sizeof(why));
	}
	if (!why[0]) {
		pr_info("guard: %s on %s passed\n", rec->name, color_name(color));
		goto out;
	}
	err = bgs_guard_rollback(st, svc, rec, back, gen, why, reason);
out:
	free(gb);
	return err;
}

int bgs_guard_rollback(struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u32 back,
		       __u32 gen, const char *why, const char *reason)
{
	struct bgs_audit au;
	struct bgs_switch sw;
	bool changed;
	int err;

	/* A trail that cannot be written now does not stop the rollback (it warns). */
	audit_open(&au, "rollback", reason);
	err = state_lock(&st->lock_fd);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec->name);
	snprintf(au.detail, sizeof(au.detail), "guard: %s", why);
	sw = switch_read(st, svc);
	if (sw.generation != gen) {
		bgs_share_desc(sw.share, au.from, sizeof(au.from));
		bgs_share_desc(back, au.to, sizeof(au.to));
		au.gen_before = sw.generation;
		pr_warn("guard: %s, but %s changed since (generation %u, not %u): not rolling "
			"back\n",
			why, rec->name, sw.generation, gen);
		err = BGS_ERR_GENERATION;
		goto out;
	}
	err = bgs_switch_set(st, svc, back, NULL, &au, &changed);
	if (err)
		goto out;
	pr_warn("guard: %s; rolled %s back to %s (generation %u)\n", why, rec->name, au.to,
		au.gen_after);
	err = BGS_ERR_GUARD;
out:
	audit_record(&au, err == BGS_ERR_GUARD ? 0 : err);
	audit_close(&au);
	if (st->lock_fd >= 0)
		close(st->lock_fd);
	st->lock_fd = -1;
	return err;
}
