/* SPDX-License-Identifier: GPL-2.0 */
/* spec_cutover.h: what the options of flip, shift, rollout, rollback, check and drain fill
 * (their tables are in spec_cutover.c).
 */
#ifndef BGS_SPEC_CUTOVER_H
#define BGS_SPEC_CUTOVER_H

#include <stdbool.h>
#include <linux/types.h>
#include "fleet.h"

struct cut_args {
	struct fleet_conn conn; /* the fleet form */
	bool wait; /* the fleet form: --wait */
	const char *check_http;
	__u64 check_timeout_ns;
	bool no_check, force;
	__u64 guard_ns; /* flip and shift: --guard D */
	bool guard; /* rollout: --guard */
	__u32 max_resets, max_silent, min_new_flows;
	const char *max_reset_ratio;
	bool wait_drain;
	__u64 timeout_ns;
	__s64 if_gen;
	const char *reason;
	const char *steps; /* rollout */
	__u64 interval_ns; /* rollout */
	__u32 interval_ms; /* drain */
};

#endif /* BGS_SPEC_CUTOVER_H */
