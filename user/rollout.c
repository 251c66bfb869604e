// SPDX-License-Identifier: GPL-2.0
/* rollout.c: `rollout`: new flows moved to a color in steps, each a shift held for an interval
 * (guarded with --guard), rolled back to where it began when a step's probe or guard fails.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "cutover.h"
#include "log.h"

#define ROLLOUT_MAX_STEPS 100

/* A rollout under way: where it began, where it goes, and the generation of its last step. */
struct rollout {
	struct bgs_state st;
	__u32 svc, start, gen;
	struct bgs_service rec;
	__u8 to;
	__u32 steps[ROLLOUT_MAX_STEPS], nsteps;
};

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

	for (t = t0 + CUT_NS;; t += CUT_NS) {
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

/* The share of step i. */
static __u32 step_share(const struct rollout *r, __u32 i)
{
	return r->to == BGS_GREEN ? r->steps[i] : BGS_SHARE_ALL - r->steps[i];
}

/* Where the rollout begins: the color it moves flows to, and every step beyond the start. */
static int rollout_plan(struct rollout *r, const struct cut_cmd *c)
{
	struct bgs_switch sw = switch_read(&r->st, r->svc);
	char pct[16];
	__u32 i, share;

	r->start = sw.share;
	r->gen = sw.generation;
	if (r->to == BGS_COLOR_NONE && share_color(r->start) == BGS_COLOR_NONE) {
		pr_warn("'%s' is split (green %s): say which color to roll out\n", r->rec.name,
			fmt_share(r->start, pct, sizeof(pct)));
		return -EINVAL;
	}
	if (r->to == BGS_COLOR_NONE)
		r->to = !share_color(r->start);
	if (c->ch.if_generation >= 0 && c->ch.if_generation != r->gen) {
		pr_warn("%s is at generation %u, not %lld: nothing changed\n", r->rec.name, r->gen,
			(long long)c->ch.if_generation);
		return BGS_ERR_GENERATION;
	}
	for (i = 0; i < r->nsteps; i++) {
		share = step_share(r, i);
		if ((r->to == BGS_GREEN && share <= r->start) ||
		    (r->to == BGS_BLUE && share >= r->start)) {
			pr_warn("--steps: %s already gets %s of new flows; a step must be above\n",
				color_name(r->to),
				fmt_share(r->to == BGS_GREEN ? r->start : BGS_SHARE_ALL - r->start,
					  pct, sizeof(pct)));
			return -EINVAL;
		}
	}
	return 0;
}

/* One step's switch, under the lock, if nobody changed the service since the last step. A
 * later step's probe that fails rolls back to where the rollout began.
 */
static int rollout_step(struct rollout *r, const struct cut_cmd *c, __u32 i)
{
	struct bgs_audit au;
	bool changed;
	int err;

	err = audit_open(&au, "rollout", c->ch.reason);
	if (err)
		return err;
	snprintf(au.service, sizeof(au.service), "%s", r->rec.name);
	err = state_lock(&r->st.lock_fd);
	if (!err && switch_read(&r->st, r->svc).generation != r->gen) {
		pr_warn("rollout: %s was changed by someone else: stopped here\n", r->rec.name);
		err = BGS_ERR_GENERATION;
	}
	if (!err)
		err = cut_switch(&r->st, r->svc, r->rec.name, step_share(r, i), c, &au, &changed);
	if (r->st.lock_fd >= 0)
		close(r->st.lock_fd);
	r->st.lock_fd = -1;
	audit_record(&au, err);
	audit_close(&au);
	if (err != BGS_ERR_CHECK || !i)
		return err;
	err = bgs_guard_rollback(&r->st, r->svc, &r->rec, r->start, r->gen, "a probe failed",
				 c->ch.reason);
	if (err == BGS_ERR_GUARD)
		return BGS_ERR_CHECK;
	if (err != BGS_ERR_GENERATION)
		pr_warn("rollout: %s was not rolled back: %s\n", r->rec.name, strerror(-err));
	return err;
}

static int rollout_run(struct rollout *r, const struct cut_cmd *c)
{
	char pct[16];
	__u32 i;
	int err;

	for (i = 0; i < r->nsteps; i++) {
		err = rollout_step(r, c, i);
		if (err)
			return err;
		r->gen = switch_read(&r->st, r->svc).generation;
		pr_info("rollout %s: step %u/%u, %s %s of new flows (generation %u)\n", r->rec.name,
			i + 1, r->nsteps, color_name(r->to),
			fmt_share(r->steps[i], pct, sizeof(pct)), r->gen);
		fflush(stdout);
		if (c->a.guard)
			err = bgs_guard_run(&r->st, r->svc, &r->rec, r->to, r->start, r->gen, &c->g,
					    c->ch.reason);
		else if (i + 1 < r->nsteps)
			err = rollout_hold(&r->st, r->svc, r->rec.name, r->gen, c->a.interval_ns);
		if (err)
			return err;
	}
	pr_info("rollout %s: done, %s %s of new flows\n", r->rec.name, color_name(r->to),
		fmt_share(r->steps[r->nsteps - 1], pct, sizeof(pct)));
	return 0;
}

int do_rollout(int argc, char **argv)
{
	struct rollout r = { .st.lock_fd = -1, .to = BGS_COLOR_NONE };
	struct cut_cmd c;
	int err;

	err = cut_parse(&bgs_spec_rollout, argc, argv, &c);
	if (err)
		return err > 0 ? 0 : err;
	if (c.p.npos == 2 && parse_color(c.p.pos[1], &r.to))
		return -EINVAL;
	if (!c.a.steps || !c.a.interval_ns) {
		pr_warn("rollout needs --steps and --interval\n");
		return -EINVAL;
	}
	if (parse_steps(c.a.steps, r.steps, &r.nsteps))
		return -EINVAL;
	c.g.duration_ns = c.a.interval_ns;
	err = state_need_root();
	if (err)
		return err;
	err = state_open(&r.st, false);
	if (err)
		return err;
	err = service_find(&r.st, c.p.pos[0], &r.svc, &r.rec);
	if (!err)
		err = rollout_plan(&r, &c);
	if (!err)
		err = rollout_run(&r, &c);
	state_close(&r.st);
	return err;
}
