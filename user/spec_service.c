// SPDX-License-Identifier: GPL-2.0
/* spec_service.c: the option tables of service add|set|del|list and backend add|del. */
#include <stddef.h>
#include <linux/types.h>

#include "bgswitch.h"
#include "fleet.h"
#include "spec_service.h"
#include "specs.h"

/* The defaults the help text names. */
_Static_assert(BGS_TABLE_SIZE == 16381 && BGS_TABLE_MAX == 131071 && BGS_WEIGHT_MAX == 1000,
	       "service's help text");

/* The fleet form's own options. */
/* --lb, --table-size, --split-by: where_ is where they are accepted. */
/* clang-format off */
#define SERVICE_LAYOUT_ROWS(where_)								\
	{ .name = "lb", .short_name = 'l', .type = BGS_OPT_FUNC,				\
	  .off = offsetof(struct service_args, lb),						\
	  .help = "Maglev tables (default), or flow hash modulo the number of "			\
	    "backends (no table, no weights)", .values = bgs_words_lb,				\
	  .parse = params_lb, .where = where_ },						\
	{ .name = "table-size", .short_name = 'M', .type = BGS_OPT_FUNC,			\
	  .off = offsetof(struct service_args, table_size), .metavar = "M",			\
	  .help = "Maglev table size, a prime from 251 to 131071 (default 16381)",		\
	  .parse = params_table_size, .where = where_ },					\
	{ .name = "split-by", .short_name = 's', .type = BGS_OPT_FUNC,				\
	  .off = offsetof(struct service_args, split_flags),					\
	  .help = "what a split between colors goes by: the hash of each flow "			\
	    "(default), or of the client's address alone", .values = bgs_words_split,		\
	  .parse = params_split_by, .where = where_ }
/* clang-format on */

/* clang-format off */
#define SERVICE_REASON_ROW									\
	{ .name = "reason", .short_name = 'm', .type = BGS_OPT_FUNC,				\
	  .off = offsetof(struct service_args, reason), .metavar = "TEXT",			\
	  .help = "why, for the audit trail (fleet: in the document)",				\
	  .parse = params_reason, .where = BGS_OPT_BOTH }
/* clang-format on */

/* clang-format off */
#define SERVICE_GEN_ROW										\
	{ .name = "if-generation", .short_name = 'G', .type = BGS_OPT_FUNC,			\
	  .off = offsetof(struct service_args, if_gen), .metavar = "G",				\
	  .help = "change only if the service is at generation G",				\
	  .parse = params_generation, .where = BGS_OPT_BOTH }
/* clang-format on */

/* clang-format off */
#define SERVICE_FLEET_ROWS									\
	BGS_OPTS_FLEET_CONN(struct service_args, conn, BGS_OPT_FLEET),											\
	{ .name = "wait", .short_name = 'W', .type = BGS_OPT_BOOL,				\
	  .off = offsetof(struct service_args, wait),						\
	  .help = "wait until every live node has applied it", .where = BGS_OPT_FLEET },	\
	{ .name = "timeout", .short_name = 't', .type = BGS_OPT_DURATION,			\
	  .off = offsetof(struct service_args, timeout_ns), .metavar = "D",			\
	  .help = "how long --wait waits (default 30s)",					\
	  .max = 24 * 3600 * 1000000000ULL, .where = BGS_OPT_FLEET }
/* clang-format on */

static const struct bgs_pos service_add_pos[] = {
	{ .name = "NAME" },
	{ .name = "VIP:PORT" },
	BGS_POS_END,
};

static const struct bgs_opt service_add_opts[] = {
	{ .name = "proto",
	  .short_name = 'p',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct service_args, proto),
	  .help = "tcp (default) or udp",
	  .values = bgs_words_proto,
	  .parse = params_proto,
	  .where = BGS_OPT_BOTH },
	SERVICE_LAYOUT_ROWS(BGS_OPT_BOTH),
	SERVICE_REASON_ROW,
	SERVICE_FLEET_ROWS,
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_service_add = {
	.name = "service add",
	.summary = "add a service: a VIP, a port and a protocol",
	.description =
		"A service is what clients address: a VIP, a port and a protocol. It starts "
		"on blue with no backends; add them with 'bgswitch backend add'. New flows "
		"of a color are spread over its backends by a Maglev lookup table of M "
		"positions (a prime; more than 100 per backend keeps each within 1% of its "
		"share), rebuilt and swapped in with one write whenever the color's backends "
		"change. Changes are written to the audit trail.",
	.pos = service_add_pos,
	.opts = service_add_opts,
};

static const struct bgs_pos service_pos[] = {
	{ .name = "NAME", .complete = "service" },
	BGS_POS_END,
};

static const struct bgs_opt service_set_opts[] = {
	{ .name = "table-size",
	  .short_name = 'M',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct service_args, table_size),
	  .metavar = "M",
	  .help = "Maglev table size, a prime from 251 to 131071 (default 16381)",
	  .parse = params_table_size },
	{ .name = "split-by",
	  .short_name = 's',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct service_args, split_flags),
	  .help = "what a split between colors goes by: the hash of each flow "
		  "(default), or of the client's address alone",
	  .values = bgs_words_split,
	  .parse = params_split_by },
	{ .name = "reason",
	  .short_name = 'm',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct service_args, reason),
	  .metavar = "TEXT",
	  .help = "why, for the audit trail",
	  .parse = params_reason },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_service_set = {
	.name = "service set",
	.summary = "change a service's table size or what a split goes by",
	.description = "Change the Maglev table size of a service (both colors' tables are rebuilt "
		       "and swapped in) or what a split between its colors goes by.",
	.pos = service_pos,
	.opts = service_set_opts,
};

static const struct bgs_opt service_del_opts[] = {
	{ .name = "force",
	  .short_name = 'f',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct service_args, force),
	  .help = "delete even though flows are live, cutting them (fleet: although "
		  "nodes report live flows)",
	  .where = BGS_OPT_BOTH },
	{ .name = "if-generation",
	  .short_name = 'G',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct service_args, if_gen),
	  .metavar = "G",
	  .help = "delete only if the service is at generation G",
	  .parse = params_generation,
	  .where = BGS_OPT_FLEET },
	SERVICE_REASON_ROW,
	SERVICE_FLEET_ROWS,
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_service_del = {
	.name = "service del",
	.summary = "delete a service",
	.description = "Delete a service: its VIP stops being answered. Refused while it has live "
		       "flows, unless --force.",
	.pos = service_pos,
	.opts = service_del_opts,
};

static const struct bgs_opt service_list_opts[] = {
	BGS_OPTS_FLEET_CONN(struct service_args, conn, BGS_OPT_FLEET),
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_service_list = {
	.name = "service list",
	.summary = "list the services",
	.description = "List the services: name, VIP, protocol, active color and generation.",
	.opts = service_list_opts,
};

static const struct bgs_pos backend_pos[] = {
	{ .name = "NAME", .complete = "service" },
	{ .name = "blue|green", .values = bgs_words_color },
	{ .name = "IP:PORT" },
	BGS_POS_END,
};

static const struct bgs_opt backend_add_opts[] = {
	{ .name = "weight",
	  .short_name = 'w',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct service_args, weight),
	  .metavar = "W",
	  .help = "its share of the color's new flows relative to the others, 0 to "
		  "1000 (default 1; 0 takes no new flow)",
	  .parse = params_weight,
	  .where = BGS_OPT_BOTH },
	SERVICE_GEN_ROW,
	SERVICE_REASON_ROW,
	SERVICE_FLEET_ROWS,
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_backend_add = {
	.name = "backend add",
	.summary = "add a backend to one color of a service",
	.description = "Add a backend to one color of a service. The new set and its lookup table "
		       "take effect for new flows with one switch write. Adding a backend that is "
		       "there already with another --weight changes its weight.",
	.pos = backend_pos,
	.opts = backend_add_opts,
};

static const struct bgs_opt backend_del_opts[] = {
	{ .name = "drain",
	  .short_name = 'd',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct service_args, drain),
	  .help = "let its live flows finish (the default in a fleet)",
	  .where = BGS_OPT_BOTH },
	{ .name = "force",
	  .short_name = 'f',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct service_args, force),
	  .help = "cut its live flows, and say how many",
	  .where = BGS_OPT_BOTH },
	SERVICE_GEN_ROW,
	SERVICE_REASON_ROW,
	SERVICE_FLEET_ROWS,
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_backend_del = {
	.name = "backend del",
	.summary = "remove a backend from one color of a service",
	.description =
		"Remove a backend from one color of a service. Removing a backend that still "
		"has live flows is refused unless --drain (it leaves the set at once and "
		"keeps its flows until they end; it is shown as draining) or --force (its "
		"flows are cut).",
	.pos = backend_pos,
	.opts = backend_del_opts,
};
