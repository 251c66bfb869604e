/* SPDX-License-Identifier: GPL-2.0 */
/* cutover.h: what the changing commands (flip, shift, rollback, rollout) share: their options,
 * parsed once for the local and the fleet form, and their help.
 */
#ifndef BGS_CUTOVER_H
#define BGS_CUTOVER_H

#include <stdbool.h>
#include <linux/types.h>
#include "fleet.h"
#include "ops.h"

#define CUT_NS 1000000000ULL
#define CUT_DRAIN_TIMEOUT_NS (15ULL * 60 * CUT_NS) /* --timeout: TCP's default idle timeout */
#define CUT_MAX_WAIT_NS (7ULL * 24 * 3600 * CUT_NS)

/* Option groups: each command takes a subset. */
#define CUT_CHECKS 0x1 /* --check-http, --check-timeout, --no-check, --force */
#define CUT_GUARD 0x2 /* --guard D and its thresholds */
#define CUT_WAIT 0x4 /* --wait-drain, --timeout */
#define CUT_ROLLOUT 0x8 /* --steps, --interval, --guard without a duration, thresholds */
#define CUT_FLEET 0x10 /* --etcd and its connection options, --wait, --timeout */

/* A changing command's line, parsed: the change, and how to make it in either form. */
struct cut_cmd {
	struct bgs_change ch;
	bool fleet; /* --etcd: write the change to the fleet */
	struct fleet_opts fo; /* the fleet form's options */
	/* the local form's options */
	struct bgs_check_opts chk;
	struct bgs_guard_opts g;
	bool force, wait, guard_steps;
	__u64 timeout_ns, interval_ns;
	const char *steps;
};

/* Parse the options of a changing command (allowed: CUT_*) into c; the positional arguments
 * are argv[optind..]. Returns 1 after printing help, 0, or -EINVAL after one line.
 */
int cut_getopt(int argc, char **argv, const char *cmd, unsigned int allowed, void (*usage)(void),
	       struct cut_cmd *c);

/* bgs_switch_set() with the command's checks, then the line that says what it did. */
int cut_switch(struct bgs_state *st, __u32 svc, const char *name, __u32 share,
	       const struct cut_cmd *c, struct bgs_audit *au, bool *changed);

#define CUT_GUARD_HELP                                                                       \
	"  -R, --max-resets N           its backends send more than N resets (default %d)\n" \
	"  -P, --max-reset-ratio R      and more than R resets per new flow (default %g)\n"  \
	"  -S, --max-silent-backends N  more than N backends take new flows but send\n"      \
	"                               nothing back for a second (default %d)\n"            \
	"  -N, --min-new-flows N        it gets fewer than N new flows in D (default %d)\n"
#define CUT_GUARD_DEFAULTS                                                     \
	BGS_GUARD_MAX_RESETS, BGS_GUARD_MAX_RESET_RATIO, BGS_GUARD_MAX_SILENT, \
		BGS_GUARD_MIN_NEW_FLOWS
#define CUT_CHECK_HELP                                                           \
	"  -H, --check-http PATH      probe with GET PATH (2xx or 3xx passes)\n" \
	"  -T, --check-timeout D      probe timeout (default 1s)\n"              \
	"  -n, --no-check             do not probe\n"                            \
	"  -f, --force                go ahead although probes failed\n"
#define CUT_GEN_HELP                                                                   \
	"  -G, --if-generation G      change only if the service is at generation G\n" \
	"  -m, --reason TEXT          why, for the audit trail\n"                      \
	"  -h, --help                 this help\n"

#endif /* BGS_CUTOVER_H */
