// SPDX-License-Identifier: GPL-2.0
/* main.c: global options and the command dispatch table of bgswitch. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/types.h>

#include "audit.h"
#include "bgswitch.h"
#include "commands.h"
#include "log.h"
#include "state.h"
#include "util.h"

#ifndef BGS_VERSION
#define BGS_VERSION "0.1.0"
#endif

struct command {
	const char *name;
	int (*func)(int argc, char **argv);
	const char *summary;
};

static const struct command commands[] = {
	{ "attach", do_attach,
	  "attach IFACE [--mode auto|native|generic] [--flows N] [--xdp-egress IF,...] "
	  "[--replace] [--change-mode] [--force]" },
	{ "detach", do_detach, "detach IFACE [--purge]" },
	{ "service", do_service,
	  "service add NAME VIP:PORT [--proto tcp|udp] [--lb maglev|modulo] [--table-size M] | "
	  "set NAME --table-size M | del NAME | list" },
	{ "backend", do_backend,
	  "backend add|del NAME blue|green IP:PORT [--weight W] [--drain|--force]" },
	{ "flip", do_flip,
	  "flip NAME [blue|green] [--check-http PATH] [--guard D] [--wait-drain] "
	  "[--if-generation G]" },
	{ "shift", do_shift, "shift NAME blue|green PERCENT [--guard D] [--if-generation G]" },
	{ "rollout", do_rollout,
	  "rollout NAME [blue|green] --steps P,P,... --interval D [--guard] [--if-generation G]" },
	{ "rollback", do_rollback, "rollback NAME [--if-generation G]" },
	{ "check", do_check, "check NAME blue|green [--check-http PATH]" },
	{ "drain", do_drain, "drain NAME [--timeout D]" },
	{ "status", do_status, "status [NAME] [--json] [--interval MS]" },
	{ "timeouts", do_timeouts, "timeouts [--tcp-idle D] [--udp-idle D] [--closing D]" },
	{ "gc", do_gc, "gc" },
	{ "limits", do_limits, "limits [--new-flows N] [--burst N]" },
	{ "watch", do_watch, "watch [NAME] [--interval MS]" },
	{ "exporter", do_exporter, "exporter --listen ADDR:PORT [--gc-interval D]" },
	{ "agent", do_agent, "agent --etcd URL[,URL...] [--node NAME] [--prefix P]" },
	{ "local", do_local, "local add|del [--netns PATH] | list" },
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

static void usage(FILE *f)
{
	size_t i;

	fprintf(f, "Usage: bgswitch [-v] [--pin-root DIR] [--audit-log PATH] COMMAND [ARGS]\n"
		   "\n"
		   "A kernel-level blue-green traffic switch (XDP ingress, TC egress).\n"
		   "\n"
		   "Commands:\n");
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %s\n", commands[i].summary);
	fprintf(f,
		"\n"
		"Options:\n"
		"  -r, --pin-root DIR     pinned state (default %s)\n"
		"  -a, --audit-log PATH   audit trail file (default $BGSWITCH_AUDIT_LOG, else\n"
		"                         %s)\n"
		"  -v, --verbose          more detail; twice for libbpf's debug output\n"
		"  -V, --version          print the version and the map layout version\n"
		"  -h, --help             this help; 'bgswitch COMMAND --help' for a command\n"
		"\n"
		"Exit status: 0 success, 1 error, 2 usage, 3 a check failed, 4 the guard rolled\n"
		"back, 5 drain or --wait timeout, 6 --if-generation mismatch or a lost race.\n",
		BGS_DEFAULT_PIN_ROOT, BGS_DEFAULT_AUDIT_LOG);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "pin-root", required_argument, NULL, 'r' },
		{ "audit-log", required_argument, NULL, 'a' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int verbosity = BGS_LOG_INFO, c, err;
	size_t i;

	/* '+': stop at the command, whose own options follow it. */
	bgs_cmd_name = "";
	while ((c = getopt_cmd(argc, argv, "+r:a:vVh", opts)) != -1) {
		switch (c) {
		case 'r':
			bgs_pin_root = optarg;
			break;
		case 'a':
			bgs_audit_path = optarg;
			break;
		case 'v':
			verbosity++;
			break;
		case 'V':
			printf("bgswitch %s (map layout %d)\n", BGS_VERSION, BGS_LAYOUT_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return 2; /* getopt_cmd() said which option, in one line */
		}
	}
	bgs_log_setup(verbosity);
	if (optind >= argc) {
		pr_warn("no command given (see 'bgswitch --help')\n");
		return 2;
	}
	if (bgs_pin_root[0] != '/' || strlen(bgs_pin_root) > 200) {
		pr_warn("--pin-root must be an absolute path of at most 200 characters\n");
		return 2;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[optind], commands[i].name))
			continue;
		argc -= optind;
		argv += optind;
		argv[0] = "bgswitch"; /* getopt's own messages then read "bgswitch: ..." */
		bgs_cmd_name = commands[i].name;
		optind = 0; /* 0: glibc re-initialises getopt for the command's own options */
		err = commands[i].func(argc, argv);
		return exit_status(err);
	}
	pr_warn("unknown command '%s' (see 'bgswitch --help')\n", argv[optind]);
	return 2;
}
