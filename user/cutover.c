// SPDX-License-Identifier: GPL-2.0
/* cutover.c: `flip`, `shift` and `rollback`: a switch between colors, wholly or by share. Each
 * command parses its line once into a struct bgs_change, then makes it on this node (the checks
 * before, the one switch write, the guard and the drain after: ops.h) or writes it to the fleet
 * (--etcd: fleet.c). The option parsing (spec_cutover.c's tables) is shared with rollout.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "cutover.h"
#include "log.h"

/* ---- options ---- */

static void cut_defaults(struct cut_cmd *c)
{
	memset(c, 0, sizeof(*c));
	c->a.conn.prefix = FLEET_DEFAULT_PREFIX;
	c->a.check_timeout_ns = BGS_CHECK_TIMEOUT_NS;
	c->a.max_resets = BGS_GUARD_MAX_RESETS;
	c->a.max_reset_ratio = BGS_GUARD_MAX_RESET_RATIO;
	c->a.min_new_flows = BGS_GUARD_MIN_NEW_FLOWS;
	c->a.max_silent = BGS_GUARD_MAX_SILENT;
	c->a.if_gen = -1;
	c->a.interval_ms = 1000;
	c->ch.if_generation = -1;
	c->ch.flip_to = BGS_COLOR_NONE;
}

/* The fleet form: --etcd names where; --timeout is how long --wait waits, at most a day. */
static int cut_fleet_opts(struct cut_cmd *c, const struct bgs_cmd_spec *spec)
{
	bool timeout = params_seen(spec, &c->p, "timeout");

	if (!c->a.conn.eo.endpoints) {
		pr_warn("'%s' with a fleet option needs --etcd URL (see 'bgswitch %s --help')\n",
			spec->name, spec->name);
		return -EINVAL;
	}
	if (timeout && c->a.timeout_ns > 24 * 3600 * CUT_NS) {
		pr_warn("--timeout: --wait waits at most 24h\n");
		return -EINVAL;
	}
	c->ch.fleet = true;
	c->ch.conn = c->a.conn;
	c->ch.wait = c->a.wait;
	c->ch.timeout_ns = timeout ? c->a.timeout_ns : FLEET_WAIT_DEFAULT_NS;
	return 0;
}

static bool spec_takes(const struct bgs_cmd_spec *spec, const char *name)
{
	const struct bgs_opt *o;

	for (o = spec->opts; o && o->name; o++)
		if (!strcmp(o->name, name))
			return true;
	return false;
}

/* The local form: options that would be ignored are refused (an operator who wrote them
 * meant something).
 */
static int cut_local_opts(struct cut_cmd *c, const struct bgs_cmd_spec *spec)
{
	static const char *const thresholds[] = { "max-resets", "max-reset-ratio",
						  "max-silent-backends", "min-new-flows" };
	size_t i;

	if (c->a.no_check && c->a.check_http) {
		pr_warn("--no-check and --check-http contradict each other\n");
		return -EINVAL;
	}
	if (params_seen(spec, &c->p, "timeout") && spec_takes(spec, "wait-drain") &&
	    !c->a.wait_drain) {
		pr_warn("--timeout is how long --wait-drain waits: it needs --wait-drain\n");
		return -EINVAL;
	}
	for (i = 0; !c->a.guard_ns && !c->a.guard && i < sizeof(thresholds) / sizeof(*thresholds);
	     i++) {
		if (!params_seen(spec, &c->p, thresholds[i]))
			continue;
		pr_warn("--%s is a threshold of the guard: it needs --guard\n", thresholds[i]);
		return -EINVAL;
	}
	if (!params_seen(spec, &c->p, "timeout"))
		c->a.timeout_ns = CUT_DRAIN_TIMEOUT_NS;
	c->chk.http_path = c->a.check_http;
	c->chk.timeout_ns = c->a.check_timeout_ns;
	c->chk.skip = c->a.no_check;
	c->g.duration_ns = c->a.guard_ns;
	c->g.max_resets = c->a.max_resets;
	c->g.max_reset_ratio = c->a.max_reset_ratio;
	c->g.min_new_flows = c->a.min_new_flows;
	c->g.max_silent = c->a.max_silent;
	return 0;
}

int cut_parse(const struct bgs_cmd_spec *spec, int argc, char **argv, struct cut_cmd *c)
{
	int err;

	cut_defaults(c);
	err = params_parse(spec, argc, argv, &c->a, &c->p);
	if (err)
		return err;
	if (c->p.help)
		return 1;
	c->ch.if_generation = c->a.if_gen;
	c->ch.reason = c->a.reason;
	return c->p.fleet ? cut_fleet_opts(c, spec) : cut_local_opts(c, spec);
}

/* ---- flip, shift and rollback ---- */

int cut_switch(struct bgs_state *st, __u32 svc, const char *name, __u32 share,
	       const struct cut_cmd *c, struct bgs_audit *au, bool *changed)
{
	struct bgs_switch_opts so = { .chk = &c->chk, .force = c->a.force };
	int err;

	err = bgs_switch_set(st, svc, share, &so, au, changed);
	if (err)
		return err;
	if (!*changed) {
		pr_info("%s: already %s (generation %u)\n", name, au->to, au->gen_before);
		return 0;
	}
	pr_info("%s: %s -> %s (generation %u)\n", name, au->from, au->to, au->gen_after);
	fflush(stdout);
	return 0;
}

/* The share the change asks for, checked against --if-generation and --wait-drain; au names
 * it even when refused.
 */
static int cut_target(const struct bgs_state *st, __u32 svc, const char *name,
		      const struct cut_cmd *c, struct bgs_audit *au, __u32 *share)
{
	struct bgs_switch sw = switch_read(st, svc);
	int err, want_err;

	au->gen_before = sw.generation;
	bgs_share_desc(sw.share, au->from, sizeof(au->from));
	err = generation_check(st, svc, name, c->ch.if_generation);
	want_err = bgs_change_share(&c->ch, name, sw.share, sw.flags & BGS_SW_HAS_PREV,
				    sw.prev_share, "", err != 0, share);
	if (!want_err)
		bgs_share_desc(*share, au->to, sizeof(au->to));
	if (!err)
		err = want_err;
	if (!err && c->a.wait_drain && share_color(*share) == BGS_COLOR_NONE) {
		pr_warn("%s: at a split both colors take new flows: neither drains (--wait-drain)\n",
			name);
		err = -EINVAL;
	}
	return err;
}

/* Make the change on this node: under the lock, then the guard and the drain without it. */
static int cut_local(const struct cut_cmd *c, const char *action)
{
	struct bgs_state st = { .lock_fd = -1 };
	struct bgs_audit au = { .fd = -1 };
	bool changed = false, opened = false;
	struct bgs_service rec;
	__u32 svc, share = 0, before;
	int err;

	err = state_need_root();
	if (err)
		return err;
	err = audit_open(&au, action, c->ch.reason);
	if (err)
		return err;
	err = state_open_maps(&st, true, BGS_MAPS_CUTOVER);
	if (err)
		goto out;
	opened = true;
	err = service_find(&st, c->ch.service, &svc, &rec);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec.name);
	before = switch_read(&st, svc).share;
	err = cut_target(&st, svc, rec.name, c, &au, &share);
	if (!err)
		err = cut_switch(&st, svc, rec.name, share, c, &au, &changed);
	if (err)
		goto out;
	/* The change is made: let other operators in while we watch. */
	close(st.lock_fd);
	st.lock_fd = -1;
	if (c->g.duration_ns && changed)
		err = bgs_guard_run(&st, svc, &rec, share > before ? BGS_GREEN : BGS_BLUE, before,
				    au.gen_after, &c->g, c->ch.reason);
	if (!err && c->a.wait_drain)
		err = bgs_drain_wait(&st, svc, rec.name, !share_color(share), c->a.timeout_ns,
				     CUT_NS);
out:
	audit_record(&au, err);
	audit_close(&au);
	if (opened)
		state_close(&st);
	return err;
}

/* The positional arguments of a flip, shift or rollback into the change. */
static int cut_change(struct cut_cmd *c, char **args)
{
	if (check_name(args[0]))
		return -EINVAL;
	snprintf(c->ch.service, sizeof(c->ch.service), "%s", args[0]);
	if (c->ch.kind == BGS_CH_FLIP && c->p.npos == 2)
		return parse_color(args[1], &c->ch.flip_to);
	if (c->ch.kind == BGS_CH_SHIFT)
		return parse_color(args[1], &c->ch.shift_color) ?:
			       parse_share(args[2], &c->ch.shift_pct);
	return 0;
}

/* The audit trail's action of each kind of change. */
static const char *const cut_actions[] = {
	[BGS_CH_FLIP] = "flip",
	[BGS_CH_SHIFT] = "shift",
	[BGS_CH_ROLLBACK] = "rollback",
};

/* A flip, shift or rollback: parse once, then make it here or write it to the fleet. */
static int cut_command(const struct bgs_cmd_spec *spec, int argc, char **argv,
		       enum bgs_change_kind kind)
{
	struct cut_cmd c;
	int err;

	err = cut_parse(spec, argc, argv, &c);
	if (err)
		return err > 0 ? 0 : err;
	c.ch.kind = kind;
	if (cut_change(&c, c.p.pos))
		return -EINVAL;
	if (c.ch.fleet)
		return fleet_switch(&c.ch);
	return cut_local(&c, cut_actions[kind]);
}

int do_flip(int argc, char **argv)
{
	return cut_command(&bgs_spec_flip, argc, argv, BGS_CH_FLIP);
}

int do_shift(int argc, char **argv)
{
	return cut_command(&bgs_spec_shift, argc, argv, BGS_CH_SHIFT);
}

int do_rollback(int argc, char **argv)
{
	return cut_command(&bgs_spec_rollback, argc, argv, BGS_CH_ROLLBACK);
}
