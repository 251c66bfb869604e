/* SPDX-License-Identifier: GPL-2.0 */
/* cutover.h: what the changing commands (flip, shift, rollback, rollout) share: their options,
 * parsed once for the local and the fleet form.
 */
#ifndef BGS_CUTOVER_H
#define BGS_CUTOVER_H

#include <stdbool.h>
#include <linux/types.h>
#include "fleet.h"
#include "ops.h"
#include "spec_cutover.h"
#include "specs.h"

#define CUT_NS 1000000000ULL
#define CUT_DRAIN_TIMEOUT_NS (15ULL * 60 * CUT_NS) /* --timeout: TCP's default idle timeout */
#define CUT_MAX_WAIT_NS (7ULL * 24 * 3600 * CUT_NS)

/* A changing command's line, parsed (spec_cutover.c's tables): the change (with the fleet
 * form's options in it), and the local form's.
 */
struct cut_cmd {
	struct cut_args a; /* the options as given */
	struct bgs_change ch;
	struct bgs_check_opts chk; /* the local form's probes */
	struct bgs_guard_opts g; /* and its guard */
	struct bgs_parsed p; /* positional arguments in p.pos[0..p.npos) */
};

/* Parse a changing command's line with its spec into c. Returns 1 after --help, 0, or -EINVAL
 * after one line (options of the other form, options that would be ignored, included).
 */
int cut_parse(const struct bgs_cmd_spec *spec, int argc, char **argv, struct cut_cmd *c);

/* bgs_switch_set() with the command's checks, then the line that says what it did. */
int cut_switch(struct bgs_state *st, __u32 svc, const char *name, __u32 share,
	       const struct cut_cmd *c, struct bgs_audit *au, bool *changed);

#endif /* BGS_CUTOVER_H */
