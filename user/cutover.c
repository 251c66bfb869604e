// SPDX-License-Identifier: GPL-2.0
/* cutover.c: `flip`, `shift` and `rollback`: a switch between colors, wholly or by share. Each
 * command parses its line once into a struct bgs_change, then makes it on this node (the checks
 * before, the one switch write, the guard and the drain after: ops.h) or writes it to the fleet
 * (--etcd: fleet.c). The option parsing here is shared with rollout.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "cutover.h"
#include "log.h"

#define MS 1000000ULL

/* ---- options ---- */

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
	{ "etcd", required_argument, NULL, 'E' },
	{ "prefix", required_argument, NULL, 'x' },
	{ "cacert", required_argument, NULL, 'C' },
	{ "cert", required_argument, NULL, 'c' },
	{ "key", required_argument, NULL, 'k' },
	{ "insecure", no_argument, NULL, 'I' },
	{ "wait", no_argument, NULL, 'W' },
	{ "help", no_argument, NULL, 'h' },
	{ 0 },
};

/* Which CUT_* groups an option belongs to (0: every command and form has it). */
static unsigned int cut_group(int c)
{
	switch (c) {
	case 'H':
	case 'T':
	case 'n':
	case 'f':
		return CUT_CHECKS;
	case 'g':
	case 'R':
	case 'P':
	case 'S':
	case 'N':
		return CUT_GUARD | CUT_ROLLOUT;
	case 'w':
		return CUT_WAIT;
	case 't':
		return CUT_WAIT | CUT_FLEET;
	case 's':
	case 'i':
		return CUT_ROLLOUT;
	case 'E':
	case 'x':
	case 'C':
	case 'c':
	case 'k':
	case 'I':
	case 'W':
		return CUT_FLEET;
	default:
		return 0;
	}
}

static const char *cut_option_name(int c)
{
	size_t i;

	for (i = 0; cut_options[i].name; i++)
		if (cut_options[i].val == c)
			return cut_options[i].name;
	return "?";
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

/* The probes' and the guard's options. */
static int cut_opt_check_guard(struct cut_cmd *c, int opt, const char *arg, bool rollout)
{
	__u32 v;

	switch (opt) {
	case 'H':
		if (check_http_path(arg))
			return -EINVAL;
		c->chk.http_path = arg;
		return 0;
	case 'T':
		return parse_duration_ns(arg, 10 * MS, 60 * CUT_NS, &c->chk.timeout_ns);
	case 'n':
		c->chk.skip = true;
		return 0;
	case 'f':
		c->force = true;
		return 0;
	case 'g':
		if (rollout) {
			c->guard_steps = true;
			return 0;
		}
		return parse_duration_ns(arg, CUT_NS, 3600 * CUT_NS, &c->g.duration_ns);
	case 'R':
		if (parse_count(arg, "--max-resets", &v))
			return -EINVAL;
		c->g.max_resets = v;
		return 0;
	case 'P':
		return parse_ratio(arg, &c->g.max_reset_ratio);
	case 'S':
		return parse_count(arg, "--max-silent-backends", &c->g.max_silent);
	case 'N':
		if (parse_count(arg, "--min-new-flows", &v))
			return -EINVAL;
		c->g.min_new_flows = v;
		return 0;
	}
	return -EINVAL;
}

/* Every other option but --help and --timeout (which waits on what depends on the form). */
static int cut_opt(struct cut_cmd *c, int opt, const char *arg, bool rollout)
{
	if (cut_group(opt) & (CUT_CHECKS | CUT_GUARD | CUT_ROLLOUT) && opt != 's' && opt != 'i')
		return cut_opt_check_guard(c, opt, arg, rollout);
	switch (opt) {
	case 'w':
		c->wait = true;
		return 0;
	case 'W':
		c->fo.wait = true;
		return 0;
	case 'E':
		c->fleet = true;
		break;
	case 'G':
		return parse_generation(arg, &c->ch.if_generation);
	case 'm':
		if (audit_check_reason(arg))
			return -EINVAL;
		c->ch.reason = arg;
		return 0;
	case 's':
		c->steps = arg;
		return 0;
	case 'i':
		return parse_duration_ns(arg, CUT_NS, 24 * 3600 * CUT_NS, &c->interval_ns);
	}
	return fleet_conn_opt(&c->fo.conn, opt, arg) == 1 ? 0 : -EINVAL;
}

static void cut_defaults(struct cut_cmd *c)
{
	memset(c, 0, sizeof(*c));
	c->ch.if_generation = -1;
	c->ch.flip_to = BGS_COLOR_NONE;
	c->chk.timeout_ns = BGS_CHECK_TIMEOUT_NS;
	c->g.max_resets = BGS_GUARD_MAX_RESETS;
	c->g.max_reset_ratio = BGS_GUARD_MAX_RESET_RATIO;
	c->g.min_new_flows = BGS_GUARD_MIN_NEW_FLOWS;
	c->g.max_silent = BGS_GUARD_MAX_SILENT;
	c->timeout_ns = CUT_DRAIN_TIMEOUT_NS;
	c->fo.conn.prefix = FLEET_DEFAULT_PREFIX;
	c->fo.timeout_ns = FLEET_WAIT_DEFAULT_NS;
}

/* Options of the other form are refused: an operator who wrote them meant something. */
static int cut_form_check(const struct cut_cmd *c, const char *cmd, int local_only, int fleet_only)
{
	if (c->fleet && local_only) {
		pr_warn("'%s --etcd': --%s is an option of a local %s only (see --help)\n", cmd,
			cut_option_name(local_only), cmd);
		return -EINVAL;
	}
	if (!c->fleet && fleet_only) {
		pr_warn("--%s is an option of the fleet form of %s (with --etcd URL)\n",
			cut_option_name(fleet_only), cmd);
		return -EINVAL;
	}
	return 0;
}

/* Options that would be ignored are refused too. */
static int cut_opts_check(struct cut_cmd *c, const char *timeout, int threshold)
{
	if (c->fleet && timeout)
		return parse_duration_ns(timeout, 0, 24 * 3600 * CUT_NS, &c->fo.timeout_ns);
	if (c->fleet)
		return 0;
	if (c->chk.skip && c->chk.http_path) {
		pr_warn("--no-check and --check-http contradict each other\n");
		return -EINVAL;
	}
	if (timeout && !c->wait) {
		pr_warn("--timeout is how long --wait-drain waits: it needs --wait-drain\n");
		return -EINVAL;
	}
	if (timeout && parse_duration_ns(timeout, 0, CUT_MAX_WAIT_NS, &c->timeout_ns))
		return -EINVAL;
	if (threshold && !c->g.duration_ns && !c->guard_steps) {
		pr_warn("--%s is a threshold of the guard: it needs --guard\n",
			cut_option_name(threshold));
		return -EINVAL;
	}
	return 0;
}

/* The long options a command takes (rollout's --guard is a switch: every step is guarded). */
static void cut_table(unsigned int allowed, struct option *opts)
{
	static const struct option rollout_guard = { "guard", no_argument, NULL, 'g' };
	size_t i, n = 0;

	for (i = 0; cut_options[i].name; i++) {
		if (cut_group(cut_options[i].val) && !(cut_group(cut_options[i].val) & allowed))
			continue;
		opts[n] = cut_options[i];
		if (opts[n].val == 'g' && (allowed & CUT_ROLLOUT))
			opts[n] = rollout_guard;
		n++;
	}
	memset(&opts[n], 0, sizeof(opts[n]));
}

int cut_getopt(int argc, char **argv, const char *cmd, unsigned int allowed, void (*usage)(void),
	       struct cut_cmd *c)
{
	struct option opts[sizeof(cut_options) / sizeof(cut_options[0])];
	bool rollout = allowed & CUT_ROLLOUT, help = false;
	int opt, threshold = 0, local_only = 0, fleet_only = 0;
	const char *timeout = NULL;
	unsigned int g;

	cut_defaults(c);
	cut_table(allowed, opts);
	while ((opt = getopt_cmd(argc, argv,
				 rollout ? "H:T:nfgR:P:S:N:wt:G:m:s:i:E:x:C:c:k:IWh" :
					   "H:T:nfg:R:P:S:N:wt:G:m:s:i:E:x:C:c:k:IWh",
				 opts)) != -1) {
		if (opt == '?')
			return -EINVAL;
		g = cut_group(opt);
		if (g && !(g & allowed)) {
			pr_warn("unknown option '-%c' (see 'bgswitch %s --help')\n", opt, cmd);
			return -EINVAL;
		}
		if ((g & ~CUT_FLEET) && !(g & CUT_FLEET) && !local_only)
			local_only = opt;
		if ((g & CUT_FLEET) && !(g & allowed & ~CUT_FLEET) && !fleet_only)
			fleet_only = opt;
		if (opt == 'R' || opt == 'P' || opt == 'S' || opt == 'N')
			threshold = opt;
		if (opt == 'h')
			help = true;
		else if (opt == 't')
			timeout = optarg;
		else if (cut_opt(c, opt, optarg, rollout))
			return -EINVAL;
	}
	if (help) {
		if (c->fleet)
			fleet_change_usage(cmd);
		else
			usage();
		return 1;
	}
	if (cut_form_check(c, cmd, local_only, fleet_only))
		return -EINVAL;
	return cut_opts_check(c, timeout, threshold);
}

/* ---- flip, shift and rollback ---- */

int cut_switch(struct bgs_state *st, __u32 svc, const char *name, __u32 share,
	       const struct cut_cmd *c, struct bgs_audit *au, bool *changed)
{
	struct bgs_switch_opts so = { .chk = &c->chk, .force = c->force };
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
	if (!err && c->wait && share_color(*share) == BGS_COLOR_NONE) {
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
	err = state_open(&st, true);
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
	if (!err && c->wait)
		err = bgs_drain_wait(&st, svc, rec.name, !share_color(share), c->timeout_ns,
				     CUT_NS);
out:
	audit_record(&au, err);
	audit_close(&au);
	if (opened)
		state_close(&st);
	return err;
}

/* The positional arguments of a flip, shift or rollback into the change. */
static int cut_change(struct cut_cmd *c, const char *cmd, int nargs, char **args)
{
	int min = 1, max = 1;

	if (c->ch.kind == BGS_CH_FLIP)
		max = 2;
	else if (c->ch.kind == BGS_CH_SHIFT)
		min = max = 3;
	if (nargs < min || nargs > max)
		return bad_args(cmd);
	if (check_name(args[0]))
		return -EINVAL;
	snprintf(c->ch.service, sizeof(c->ch.service), "%s", args[0]);
	if (c->ch.kind == BGS_CH_FLIP && nargs == 2)
		return parse_color(args[1], &c->ch.flip_to);
	if (c->ch.kind == BGS_CH_SHIFT)
		return parse_color(args[1], &c->ch.shift_color) ?:
			       parse_share(args[2], &c->ch.shift_pct);
	return 0;
}

/* A flip, shift or rollback: parse once, then make it here or write it to the fleet. */
static int cut_command(int argc, char **argv, enum bgs_change_kind kind, const char *cmd,
		       unsigned int allowed, void (*usage)(void))
{
	struct cut_cmd c;
	int err;

	err = cut_getopt(argc, argv, cmd, allowed | CUT_FLEET, usage, &c);
	if (err)
		return err > 0 ? 0 : err;
	c.ch.kind = kind;
	err = cut_change(&c, cmd, argc - optind, argv + optind);
	if (err)
		return -EINVAL;
	if (c.fleet)
		return fleet_switch(&c.fo, &c.ch);
	return cut_local(&c, cmd);
}

static void flip_usage(void)
{
	printf("Usage: bgswitch flip NAME [blue|green] [options]\n"
	       "\n"
	       "Send every new flow of NAME to the given color (by default the other one) with\n"
	       "one 8-byte write. Flows already open keep draining to the color they began on.\n"
	       "First, every backend of that color is probed from this node (a TCP connect, or\n"
	       "an HTTP GET); the flip is refused if one fails.\n"
	       "\n" CUT_CHECK_HELP
	       "  -g, --guard D              then watch the new color for D and roll back when:\n" CUT_GUARD_HELP
	       "  -w, --wait-drain           then wait until the old color has no live flow\n"
	       "  -t, --timeout D            how long to wait for it (default 15m)\n" CUT_GEN_HELP
	       "\n"
	       "Exit status: 0 done, 3 a probe failed, 4 the guard rolled back, 5 the old color\n"
	       "did not drain in time, 6 the generation did not match, 1 any other error.\n",
	       CUT_GUARD_DEFAULTS);
}

int do_flip(int argc, char **argv)
{
	return cut_command(argc, argv, BGS_CH_FLIP, "flip", CUT_CHECKS | CUT_GUARD | CUT_WAIT,
			   flip_usage);
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
	       "\n" CUT_CHECK_HELP
	       "  -g, --guard D              then watch the color that gained for D and roll\n"
	       "                             back when:\n" CUT_GUARD_HELP
	       "  -w, --wait-drain           at 0%% or 100%%: then wait until the other color has\n"
	       "                             no live flow\n"
	       "  -t, --timeout D            how long to wait for it (default 15m)\n" CUT_GEN_HELP
	       "\n"
	       "Exit status as for flip.\n",
	       CUT_GUARD_DEFAULTS);
}

int do_shift(int argc, char **argv)
{
	return cut_command(argc, argv, BGS_CH_SHIFT, "shift", CUT_CHECKS | CUT_GUARD | CUT_WAIT,
			   shift_usage);
}

static void rollback_usage(void)
{
	printf("Usage: bgswitch rollback NAME [options]\n"
	       "\n"
	       "Undo the last flip or shift: new flows go back to where they went before it, with\n"
	       "the same one write, after the same probes of the color that gains.\n"
	       "\n" CUT_CHECK_HELP CUT_GEN_HELP);
}

int do_rollback(int argc, char **argv)
{
	return cut_command(argc, argv, BGS_CH_ROLLBACK, "rollback", CUT_CHECKS, rollback_usage);
}
