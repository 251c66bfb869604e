/* SPDX-License-Identifier: GPL-2.0 */
/* spec_service.h: what the options of service add|set|del|list and backend add|del fill (their
 * tables are in spec_service.c).
 */
#ifndef BGS_SPEC_SERVICE_H
#define BGS_SPEC_SERVICE_H

#include <stdbool.h>
#include <linux/types.h>
#include "fleet.h"

struct service_args {
	struct fleet_conn conn; /* the fleet form */
	bool wait; /* the fleet form: --wait, --timeout */
	__u64 timeout_ns;
	__u8 proto, lb;
	__u32 table_size, split_flags;
	__u16 weight;
	bool force, drain;
	__s64 if_gen;
	const char *reason;
};

#endif /* BGS_SPEC_SERVICE_H */
