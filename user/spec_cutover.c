// SPDX-License-Identifier: GPL-2.0
/* spec_cutover.c: the option tables of flip, shift, rollout, rollback, check and drain. */
#include <stddef.h>

#include "fleet.h"
#include "spec_cutover.h"
#include "specs.h"

#define BGS_MS 1000000ULL
#define BGS_NS 1000000000ULL

/* clang-format off */
#define CUT_CHECK_ROWS										\
	{ .name = "check-http", .short_name = 'H', .type = BGS_OPT_STR,				\
	  .off = offsetof(struct cut_args, check_http), .metavar = "PATH",			\
	  .help = "probe with GET PATH (2xx or 3xx passes)" },					\
	{ .name = "check-timeout", .short_name = 'T', .type = BGS_OPT_DURATION,			\
	  .off = offsetof(struct cut_args, check_timeout_ns), .metavar = "D",			\
	  .help = "probe timeout (default 1s)", .min = 10 * BGS_MS,				\
	  .max = 60 * BGS_NS },									\
	{ .name = "no-check", .short_name = 'n', .type = BGS_OPT_BOOL,				\
	  .off = offsetof(struct cut_args, no_check), .help = "do not probe" },			\
	{ .name = "force", .short_name = 'f', .type = BGS_OPT_BOOL,				\
	  .off = offsetof(struct cut_args, force),						\
	  .help = "go ahead although probes failed" }
/* clang-format on */

/* clang-format off */
#define CUT_THRESHOLD_ROWS									\
	{ .name = "max-resets", .short_name = 'R', .type = BGS_OPT_U32,				\
	  .off = offsetof(struct cut_args, max_resets), .metavar = "N",				\
	  .help = "guard: its backends send more than N resets (default 10)",			\
	  .max = 1000000000 },									\
	{ .name = "max-reset-ratio", .short_name = 'P', .type = BGS_OPT_STR,			\
	  .off = offsetof(struct cut_args, max_reset_ratio), .metavar = "R",			\
	  .help = "guard: and more than R resets per new flow (default 0.1)" },			\
	{ .name = "max-silent-backends", .short_name = 'S', .type = BGS_OPT_U32,		\
	  .off = offsetof(struct cut_args, max_silent), .metavar = "N",				\
	  .help = "guard: more than N backends send nothing back for 1s (default 0)",		\
	  .max = 1000000000 },									\
	{ .name = "min-new-flows", .short_name = 'N', .type = BGS_OPT_U32,			\
	  .off = offsetof(struct cut_args, min_new_flows), .metavar = "N",			\
	  .help = "guard: it gets fewer than N new flows in D (default 1)",			\
	  .max = 1000000000 }
/* clang-format on */

/* clang-format off */
#define CUT_GEN_ROWS										\
	{ .name = "if-generation", .short_name = 'G', .type = BGS_OPT_FUNC,			\
	  .off = offsetof(struct cut_args, if_gen), .metavar = "G",				\
	  .help = "change only if the service is at generation G",				\
	  .parse = params_generation, .where = BGS_OPT_BOTH },					\
	{ .name = "reason", .short_name = 'm', .type = BGS_OPT_FUNC,				\
	  .off = offsetof(struct cut_args, reason), .metavar = "TEXT",				\
	  .help = "why, for the audit trail (fleet: in the document)",				\
	  .parse = params_reason, .where = BGS_OPT_BOTH }
/* clang-format on */

/* flip's and shift's: the guard, and the wait for the drain. */
/* clang-format off */
#define CUT_GUARD_ROWS										\
	{ .name = "guard", .short_name = 'g', .type = BGS_OPT_DURATION,				\
	  .off = offsetof(struct cut_args, guard_ns), .metavar = "D",				\
	  .help = "then watch the color that gains for D; roll back if a threshold "		\
	    "trips", .min = BGS_NS, .max = 3600 * BGS_NS }
/* clang-format on */

/* clang-format off */
#define CUT_DRAIN_ROWS										\
	{ .name = "wait-drain", .short_name = 'w', .type = BGS_OPT_BOOL,			\
	  .off = offsetof(struct cut_args, wait_drain),						\
	  .help = "then wait until the color that lost its new flows has no live "		\
	    "flow (shift: at 0% or 100%)" },							\
	{ .name = "timeout", .short_name = 't', .type = BGS_OPT_DURATION,			\
	  .off = offsetof(struct cut_args, timeout_ns), .metavar = "D",				\
	  .help = "how long --wait-drain (default 15m) or --wait (30s) waits",			\
	  .max = 24 * 3600 * BGS_NS, .where = BGS_OPT_BOTH }
/* clang-format on */

/* The fleet form's own options (beside --if-generation, --reason, --timeout). */
/* clang-format off */
#define CUT_FLEET_ROWS										\
	BGS_OPTS_FLEET_CONN(struct cut_args, conn, BGS_OPT_FLEET),				\
	{ .name = "wait", .short_name = 'W', .type = BGS_OPT_BOOL,				\
	  .off = offsetof(struct cut_args, wait),						\
	  .help = "wait until every live node has applied it", .where = BGS_OPT_FLEET }
/* clang-format on */

static const struct bgs_pos flip_pos[] = {
	{ .name = "NAME", .complete = "service" },
	{ .name = "blue|green", .values = bgs_words_color, .optional = true },
	BGS_POS_END,
};

static const struct bgs_opt flip_opts[] = {
	CUT_CHECK_ROWS, CUT_GUARD_ROWS, CUT_THRESHOLD_ROWS, CUT_DRAIN_ROWS,
	CUT_GEN_ROWS,	CUT_FLEET_ROWS, BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_flip = {
	.name = "flip",
	.summary = "send every new flow of a service to one color",
	.description = "Send every new flow of NAME to the given color (by default the other one) "
		       "with one 8-byte write. Flows already open keep draining to the color they "
		       "began on. First, every backend of that color is probed from this node (a "
		       "TCP connect, or an HTTP GET); the flip is refused if one fails.\n\n"
		       "With --etcd, the flip is written to the service's document in etcd, and "
		       "every node's agent applies it.\n\n"
		       "Exit status: 0 done, 3 a probe failed, 4 the guard rolled back, 5 the old "
		       "color did not drain in time, 6 the generation did not match, 1 any other "
		       "error.",
	.pos = flip_pos,
	.opts = flip_opts,
};

static const struct bgs_pos shift_pos[] = {
	{ .name = "NAME", .complete = "service" },
	{ .name = "blue|green", .values = bgs_words_color },
	{ .name = "PERCENT" },
	BGS_POS_END,
};

static const struct bgs_opt shift_opts[] = {
	CUT_CHECK_ROWS, CUT_GUARD_ROWS, CUT_THRESHOLD_ROWS, CUT_DRAIN_ROWS,
	CUT_GEN_ROWS,	CUT_FLEET_ROWS, BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_shift = {
	.name = "shift",
	.summary = "send a percentage of a service's new flows to one color",
	.description =
		"Send PERCENT of the new flows of NAME (0% to 100%, in steps of 0.01%) to "
		"the color, the rest to the other one, with one 8-byte write. A flow's color "
		"follows from a hash of its addresses and ports, so raising a color's share "
		"only adds flows to it: a client connection that went there at 5% would go "
		"there at 25%. Flows already open stay where they are. 100% is a flip, 0% a "
		"flip the other way. The color that gains is probed first, as by flip.\n\n"
		"Exit status as for flip.",
	.pos = shift_pos,
	.opts = shift_opts,
};

static const struct bgs_pos rollout_pos[] = {
	{ .name = "NAME", .complete = "service" },
	{ .name = "blue|green", .values = bgs_words_color, .optional = true },
	BGS_POS_END,
};

static const struct bgs_opt rollout_opts[] = {
	{ .name = "steps",
	  .short_name = 's',
	  .type = BGS_OPT_STR,
	  .off = offsetof(struct cut_args, steps),
	  .metavar = "P,P,...",
	  .help = "rising percentages, like 5,25,50,100" },
	{ .name = "interval",
	  .short_name = 'i',
	  .type = BGS_OPT_DURATION,
	  .off = offsetof(struct cut_args, interval_ns),
	  .metavar = "D",
	  .help = "how long each step is held (like 30s or 5m)",
	  .min = BGS_NS,
	  .max = 24 * 3600 * BGS_NS },
	{ .name = "guard",
	  .short_name = 'g',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct cut_args, guard),
	  .help = "watch every step; roll back if a threshold trips" },
	CUT_THRESHOLD_ROWS,
	CUT_CHECK_ROWS,
	CUT_GEN_ROWS,
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_rollout = {
	.name = "rollout",
	.summary = "move a service's new flows to a color in timed steps",
	.description = "Move new flows of NAME to the color (by default the one that gets none) in "
		       "steps: each step is a shift to the next percentage, held for the interval. "
		       "With --guard the color's backends are watched through every interval, and "
		       "when they trip a threshold the service is rolled back to where it was "
		       "before the rollout and the rollout stops. A probe that fails at a later "
		       "step rolls back too. A change made by someone else in between stops the "
		       "rollout where it is.\n\n"
		       "Exit status: 0 done, 3 a probe failed, 4 the guard rolled back, 6 the "
		       "service was changed by someone else, 1 any other error.",
	.pos = rollout_pos,
	.opts = rollout_opts,
};

static const struct bgs_pos rollback_pos[] = {
	{ .name = "NAME", .complete = "service" },
	BGS_POS_END,
};

static const struct bgs_opt rollback_opts[] = {
	CUT_CHECK_ROWS,
	CUT_GEN_ROWS,
	CUT_FLEET_ROWS,
	{ .name = "timeout",
	  .short_name = 't',
	  .type = BGS_OPT_DURATION,
	  .off = offsetof(struct cut_args, timeout_ns),
	  .metavar = "D",
	  .help = "how long --wait waits (default 30s)",
	  .max = 24 * 3600 * BGS_NS,
	  .where = BGS_OPT_FLEET },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_rollback = {
	.name = "rollback",
	.summary = "undo a service's last flip or shift",
	.description =
		"Undo the last flip or shift: new flows go back to where they went before "
		"it, with the same one write, after the same probes of the color that gains.",
	.pos = rollback_pos,
	.opts = rollback_opts,
};

static const struct bgs_pos check_pos[] = {
	{ .name = "NAME", .complete = "service" },
	{ .name = "blue|green", .values = bgs_words_color },
	BGS_POS_END,
};

static const struct bgs_opt check_opts[] = {
	{ .name = "check-http",
	  .short_name = 'H',
	  .type = BGS_OPT_STR,
	  .off = offsetof(struct cut_args, check_http),
	  .metavar = "PATH",
	  .help = "probe with GET PATH (2xx or 3xx passes)" },
	{ .name = "check-timeout",
	  .short_name = 'T',
	  .type = BGS_OPT_DURATION,
	  .off = offsetof(struct cut_args, check_timeout_ns),
	  .metavar = "D",
	  .help = "probe timeout (default 1s)",
	  .min = 10 * BGS_MS,
	  .max = 60 * BGS_NS },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_check = {
	.name = "check",
	.summary = "probe every backend of one color of a service",
	.description =
		"Probe every backend of one color of NAME from this node, as a flip to it "
		"would, all at once: a TCP connect, or an HTTP GET of PATH (2xx or 3xx "
		"passes). One line per backend; exit status 3 if any fails. Changes nothing.",
	.pos = check_pos,
	.opts = check_opts,
};

static const struct bgs_pos drain_pos[] = {
	{ .name = "NAME", .complete = "service" },
	BGS_POS_END,
};

static const struct bgs_opt drain_opts[] = {
	{ .name = "timeout",
	  .short_name = 't',
	  .type = BGS_OPT_DURATION,
	  .off = offsetof(struct cut_args, timeout_ns),
	  .metavar = "D",
	  .help = "how long to wait (default 15m)",
	  .max = 24 * 3600 * BGS_NS },
	{ .name = "interval",
	  .short_name = 'i',
	  .type = BGS_OPT_U32,
	  .off = offsetof(struct cut_args, interval_ms),
	  .metavar = "MS",
	  .help = "progress period, 100 to 60000 (default 1000)",
	  .min = 100,
	  .max = 60000 },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_drain = {
	.name = "drain",
	.summary = "wait until a service's inactive color has no live flow",
	.description = "Wait until the inactive color of NAME has no live flow (closed and idle "
		       "flows do not count), printing its live flows every interval. Exit status 5 "
		       "if some are still live after the timeout. Changes nothing.",
	.pos = drain_pos,
	.opts = drain_opts,
};
