/* SPDX-License-Identifier: GPL-2.0 */
/* specs.h: the option tables of the commands (struct bgs_cmd_spec), each defined beside its
 * command or in a spec_<area>.c file, all listed in specs.c's bgs_cmd_specs[].
 */
#ifndef BGS_SPECS_H
#define BGS_SPECS_H

#include "params.h"

#endif /* BGS_SPECS_H */
