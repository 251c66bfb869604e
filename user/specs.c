// SPDX-License-Identifier: GPL-2.0
/* specs.c: every command's option table, in the order `bgswitch --help` lists them. */
#include <stddef.h>

#include "params.h"
#include "specs.h"

const struct bgs_cmd_spec *const bgs_cmd_specs[] = {
	&bgs_spec_global,	&bgs_spec_attach,
	&bgs_spec_detach,	&bgs_spec_service_add,
	&bgs_spec_service_set,	&bgs_spec_service_del,
	&bgs_spec_service_list, &bgs_spec_backend_add,
	&bgs_spec_backend_del,	&bgs_spec_flip,
	&bgs_spec_shift,	&bgs_spec_rollout,
	&bgs_spec_rollback,	&bgs_spec_check,
	&bgs_spec_drain,	&bgs_spec_status,
	&bgs_spec_timeouts,	&bgs_spec_gc,
	&bgs_spec_limits,	&bgs_spec_watch,
	&bgs_spec_exporter,	&bgs_spec_agent,
	&bgs_spec_local_add,	&bgs_spec_local_del,
	&bgs_spec_local_list,	NULL,
};
