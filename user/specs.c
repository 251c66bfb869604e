// SPDX-License-Identifier: GPL-2.0
/* specs.c: every command's option table, in the order `bgswitch --help` lists them. */
#include <stddef.h>

#include "params.h"
#include "specs.h"

const struct bgs_cmd_spec *const bgs_cmd_specs[] = {
	NULL,
};
