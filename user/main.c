// SPDX-License-Identifier: GPL-2.0
/* main.c: global options and the command dispatch table of bgswitch. */
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/types.h>

#include "audit.h"
#include "bgswitch.h"
#include "commands.h"
#include "log.h"
#include "specs.h"
#include "state.h"
#include "util.h"

#ifndef BGS_VERSION
#define BGS_VERSION "0.1.0"
#endif

struct command {
	const char *name;
	int (*func)(int argc, char **argv);
};

/* The commands; their summaries and options are their specs in bgs_cmd_specs[] (specs.c). */
static const struct command commands[] = {
	{ "attach", do_attach },   { "detach", do_detach },
	{ "service", do_service }, { "backend", do_backend },
	{ "flip", do_flip },	   { "shift", do_shift },
	{ "rollout", do_rollout }, { "rollback", do_rollback },
	{ "check", do_check },	   { "drain", do_drain },
	{ "status", do_status },   { "timeouts", do_timeouts },
	{ "gc", do_gc },	   { "limits", do_limits },
	{ "watch", do_watch },	   { "exporter", do_exporter },
	{ "agent", do_agent },	   { "local", do_local },
	{ "__gen", do_gen }, /* hidden: the completion and the man page, from the specs */
};

/* The exit status of a command's error: most are 1; those a pipeline acts on have their own. */
static int exit_status(int err)
{
	switch (err) {
	case 0:
		return 0;
	case BGS_ERR_CHECK:
		return 3;
	case BGS_ERR_GUARD:
		return 4;
	case BGS_ERR_TIMEOUT:
		return 5;
	case BGS_ERR_GENERATION:
		return 6;
	case BGS_ERR_USAGE:
		return 2;
	default:
		return 1;
	}
}

struct global_args {
	const char *pin_root, *audit_log;
	int verbose;
	bool version;
};

static int check_pin_root(const char *arg, void *dst)
{
	(void)dst;
	if (arg[0] != '/' || strlen(arg) > 200) {
		pr_warn("--pin-root must be an absolute path of at most 200 characters\n");
		return -EINVAL;
	}
	return 0;
}

static const struct bgs_opt global_opts[] = {
	{ .name = "pin-root",
	  .short_name = 'r',
	  .type = BGS_OPT_STR,
	  .off = offsetof(struct global_args, pin_root),
	  .metavar = "DIR",
	  .help = "pinned state (default " BGS_DEFAULT_PIN_ROOT ")",
	  .complete = "dir",
	  .parse = check_pin_root },
	{ .name = "audit-log",
	  .short_name = 'a',
	  .type = BGS_OPT_STR,
	  .off = offsetof(struct global_args, audit_log),
	  .metavar = "PATH",
	  .help = "audit trail file (default $BGSWITCH_AUDIT_LOG, else " BGS_DEFAULT_AUDIT_LOG ")",
	  .complete = "file" },
	{ .name = "verbose",
	  .short_name = 'v',
	  .type = BGS_OPT_COUNT,
	  .off = offsetof(struct global_args, verbose),
	  .help = "more detail; twice for libbpf's debug output" },
	{ .name = "version",
	  .short_name = 'V',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct global_args, version),
	  .help = "print the version and the map layout version" },
	BGS_OPT_END,
};

static const struct bgs_pos global_pos[] = {
	{ .name = "COMMAND" },
	{ .name = "ARGS", .optional = true, .many = true },
	BGS_POS_END,
};

/* bgswitch --help: this, then the commands' summaries (params_usage()). */
const struct bgs_cmd_spec bgs_spec_global = {
	.name = "",
	.summary = "a kernel-level blue-green traffic switch (XDP ingress, TC egress)",
	.description =
		"A kernel-level blue-green traffic switch (XDP ingress, TC egress). "
		"'bgswitch COMMAND --help' for a command.\n\n"
		"Exit status: 0 success, 1 error, 2 usage, 3 a check failed, 4 the guard "
		"rolled back, 5 drain or --wait timeout, 6 --if-generation mismatch or a lost "
		"race.",
	.pos = global_pos,
	.opts = global_opts,
	.flags = BGS_SPEC_STOP | BGS_SPEC_HIDDEN,
};

/* The global options, up to the command (*cmd: its index). Returns 1 when they said all
 * (--help, --version).
 */
static int parse_global(int argc, char **argv, int *cmd)
{
	struct global_args a = { .pin_root = bgs_pin_root, .audit_log = bgs_audit_path };
	struct bgs_parsed p;
	int err;

	err = params_parse(&bgs_spec_global, argc, argv, &a, &p);
	if (err)
		return err;
	if (p.help)
		return 1;
	if (a.version) {
		printf("bgswitch %s (map layout %d)\n", BGS_VERSION, BGS_LAYOUT_VERSION);
		return 1;
	}
	bgs_pin_root = a.pin_root;
	bgs_audit_path = a.audit_log;
	bgs_log_setup(BGS_LOG_INFO + a.verbose);
	*cmd = argc - p.npos;
	return 0;
}

int main(int argc, char **argv)
{
	int err, cmd;
	size_t i;

	bgs_cmd_name = "";
	err = parse_global(argc, argv, &cmd);
	if (err)
		return err > 0 ? 0 : 2; /* params_parse() said which option, in one line */
	if (cmd >= argc) {
		pr_warn("no command given (see 'bgswitch --help')\n");
		return 2;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[cmd], commands[i].name))
			continue;
		argc -= cmd;
		argv += cmd;
		argv[0] = "bgswitch"; /* getopt's own messages then read "bgswitch: ..." */
		bgs_cmd_name = commands[i].name;
		optind = 0; /* 0: glibc re-initialises getopt for the command's own options */
		return exit_status(commands[i].func(argc, argv));
	}
	pr_warn("unknown command '%s' (see 'bgswitch --help')\n", argv[cmd]);
	return 2;
}
