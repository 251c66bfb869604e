/* SPDX-License-Identifier: GPL-2.0 */
/* params.h: command options as data: one table per command gives its parsing, --help, the bash
 * completion and the man page's option list.
 */
#ifndef BGS_PARAMS_H
#define BGS_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <linux/types.h>

enum bgs_opt_type {
	BGS_OPT_BOOL, /* no argument: sets a bool */
	BGS_OPT_COUNT, /* no argument: adds 1 to an int (-v -v) */
	BGS_OPT_STR, /* const char *, checked by .parse when set */
	BGS_OPT_U32, /* __u32 from .min to .max */
	BGS_OPT_DURATION, /* __u64 nanoseconds from .min to .max ("500ms", "2s", "5m", "1h") */
	BGS_OPT_FUNC, /* .parse(arg, dst) converts and checks */
};

/* Where an option is accepted (struct bgs_opt.where). */
#define BGS_OPT_LOCAL 0x1 /* the local form (on this node's pinned state) */
#define BGS_OPT_FLEET 0x2 /* the fleet form (--etcd: a document in etcd) */
#define BGS_OPT_BOTH (BGS_OPT_LOCAL | BGS_OPT_FLEET)

struct bgs_opt {
	const char *name; /* long name, without "--" */
	char short_name; /* 0: none */
	enum bgs_opt_type type;
	size_t off; /* offsetof() the destination in the command's config struct */
	const char *metavar; /* argument's name in help ("D", "PATH"); NULL: the values' words */
	const char *help; /* a phrase, no final period (--help fills it to 80 columns) */
	const char *const *values; /* words it takes, for help and completion (.parse checks) */
	const char *complete; /* how bash completes it: "file", "dir", "iface", "iface-list" */
	__u64 min, max; /* BGS_OPT_U32 and BGS_OPT_DURATION bounds */
	int (*parse)(const char *arg, void *dst); /* 0 or -EINVAL after one pr_warn line */
	unsigned int where; /* BGS_OPT_LOCAL / BGS_OPT_FLEET; 0 means BGS_OPT_LOCAL */
};

/* clang-format off */
#define BGS_OPT_END { .name = NULL }
/* clang-format on */

/* One positional argument (in order). */
struct bgs_pos {
	const char *name; /* "NAME", "IFACE", "blue|green", "VIP:PORT" */
	const char *const *values; /* fixed words, or NULL */
	const char *complete; /* "iface", "service", "file", or NULL */
	bool optional;
	bool many; /* the last one only: it takes the rest (one or more, none if optional) */
};

/* clang-format off */
#define BGS_POS_END { .name = NULL }
/* clang-format on */

/* A command or subcommand: "flip", "service add". */
struct bgs_cmd_spec {
	const char *name;
	const char *summary; /* one line, for `bgswitch --help` and the man page */
	const char *description; /* --help text, filled to 80 columns; "\n" breaks, or NULL */
	const struct bgs_pos *pos;
	const struct bgs_opt *opts; /* --help is implicit */
	unsigned int flags; /* BGS_SPEC_* */
};

/* struct bgs_cmd_spec.flags */
#define BGS_SPEC_STOP 0x1 /* options end at the first positional (the global options) */
#define BGS_SPEC_HIDDEN 0x2 /* left out of `bgswitch --help`, completion and man page */

/* What parsing found beside the converted values. */
struct bgs_parsed {
	char **pos; /* positional arguments */
	int npos;
	__u64 seen; /* bit i: opts[i] was given */
	bool help; /* --help given: usage printed, nothing else to do */
	bool fleet; /* an option accepted only in the fleet form was given */
};

/* Parse argv[1..] with spec's table into cfg. One pr_warn line and -EINVAL on bad input
 * (unknown option, bad value, option not accepted in the form used, wrong positional count).
 */
int params_parse(const struct bgs_cmd_spec *spec, int argc, char **argv, void *cfg,
		 struct bgs_parsed *out);
bool params_seen(const struct bgs_cmd_spec *spec, const struct bgs_parsed *p, const char *name);
void params_usage(const struct bgs_cmd_spec *spec, FILE *f);
void params_wrap(FILE *f, const char *text, int indent);
void params_usage_line(const struct bgs_cmd_spec *spec, FILE *f);
const struct bgs_cmd_spec *params_find(const char *name);

/* A command with subcommands ("service add"): argv[1] names it, and its spec is found in
 * bgs_cmd_specs[] as "CMD SUB". No subcommand, or an unknown one: one line, BGS_ERR_USAGE.
 * --help lists the subcommands' usage lines.
 */
struct bgs_subcmd {
	const char *name;
	int (*func)(int argc, char **argv);
};

int params_subcommand(const char *cmd, const struct bgs_subcmd *subs, int argc, char **argv);

/* Shared rows. The fleet connection options, into a struct fleet_conn member of the command's
 * options struct; where: BGS_OPT_FLEET where they select the fleet form, BGS_OPT_BOTH in the
 * agent (always fleet).
 */
int params_fleet_prefix(const char *arg, void *dst);
/* clang-format off */
#define BGS_OPTS_FLEET_CONN(struct_, member_, where_)				\
	{ .name = "etcd", .short_name = 'E', .type = BGS_OPT_STR,			\
	  .off = offsetof(struct_, member_.eo.endpoints), .metavar = "URL[,URL...]",	\
	  .help = "etcd endpoints (http:// only to loopback unless --insecure)",	\
	  .where = where_ },								\
	{ .name = "prefix", .short_name = 'x', .type = BGS_OPT_FUNC,			\
	  .off = offsetof(struct_, member_.prefix), .metavar = "P",				\
	  .help = "key prefix (default " FLEET_DEFAULT_PREFIX ")",			\
	  .parse = params_fleet_prefix, .where = where_ },				\
	{ .name = "cacert", .short_name = 'C', .type = BGS_OPT_STR,			\
	  .off = offsetof(struct_, member_.eo.cacert), .metavar = "FILE",			\
	  .help = "CA certificate of the etcd servers", .complete = "file",		\
	  .where = where_ },								\
	{ .name = "cert", .short_name = 'c', .type = BGS_OPT_STR,			\
	  .off = offsetof(struct_, member_.eo.cert), .metavar = "FILE",			\
	  .help = "client certificate", .complete = "file", .where = where_ },		\
	{ .name = "key", .short_name = 'k', .type = BGS_OPT_STR,			\
	  .off = offsetof(struct_, member_.eo.key), .metavar = "FILE",			\
	  .help = "client key", .complete = "file", .where = where_ },			\
	{ .name = "insecure", .short_name = 'I', .type = BGS_OPT_BOOL,			\
	  .off = offsetof(struct_, member_.eo.insecure),					\
	  .help = "allow plain http:// to a non-loopback address", .where = where_ }
/* clang-format on */

/* .parse converters of the shared kinds of value (util.c's checks and their messages): a color
 * and a protocol into __u8, --lb into __u8, --split-by into __u32 flags, --table-size into __u32,
 * --weight into __u16, --if-generation into __s64, --reason (checked) into const char *.
 */
int params_color(const char *arg, void *dst);
int params_proto(const char *arg, void *dst);
int params_lb(const char *arg, void *dst);
int params_split_by(const char *arg, void *dst);
int params_table_size(const char *arg, void *dst);
int params_weight(const char *arg, void *dst);
int params_generation(const char *arg, void *dst);
int params_reason(const char *arg, void *dst);

/* Enum words shared by several tables. */
extern const char *const bgs_words_color[]; /* blue green */
extern const char *const bgs_words_proto[]; /* tcp udp */
extern const char *const bgs_words_lb[]; /* maglev modulo */
extern const char *const bgs_words_split[]; /* flow client */
extern const char *const bgs_words_mode[]; /* auto native generic */

/* Every command and subcommand's spec (NULL-terminated), for help, completion and the man page. */
extern const struct bgs_cmd_spec *const bgs_cmd_specs[];

/* The bash completion and the man page from their templates (contrib/bash-completion/bgswitch.in:
 * its "@SPECS@" line; doc/bgswitch.8.in: see params_man.c).
 */
int params_gen_completion(FILE *in, FILE *out);
int params_gen_man(FILE *in, FILE *out);

#endif /* BGS_PARAMS_H */
