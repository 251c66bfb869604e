/* SPDX-License-Identifier: GPL-2.0 */
/* specs.h: the option tables of the commands (struct bgs_cmd_spec), each defined beside its
 * command or in a spec_<area>.c file, all listed in specs.c's bgs_cmd_specs[].
 */
#ifndef BGS_SPECS_H
#define BGS_SPECS_H

#include "params.h"

/* main.c */
extern const struct bgs_cmd_spec bgs_spec_global;
/* attach.c */
extern const struct bgs_cmd_spec bgs_spec_attach, bgs_spec_detach;
/* spec_service.c */
extern const struct bgs_cmd_spec bgs_spec_service_add, bgs_spec_service_set, bgs_spec_service_del,
	bgs_spec_service_list, bgs_spec_backend_add, bgs_spec_backend_del;
/* spec_cutover.c */
extern const struct bgs_cmd_spec bgs_spec_flip, bgs_spec_shift, bgs_spec_rollout, bgs_spec_rollback,
	bgs_spec_check, bgs_spec_drain;
/* status.c, watch.c, exporter.c, agent.c, local.c */
extern const struct bgs_cmd_spec bgs_spec_status, bgs_spec_watch, bgs_spec_exporter, bgs_spec_agent,
	bgs_spec_local_add, bgs_spec_local_del, bgs_spec_local_list;
/* maint.c */
extern const struct bgs_cmd_spec bgs_spec_timeouts, bgs_spec_gc, bgs_spec_limits;

#endif /* BGS_SPECS_H */
