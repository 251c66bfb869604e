// SPDX-License-Identifier: GPL-2.0
/* mhd.c: loading libmicrohttpd for the exporter (see mhd.h). */
#include "dl.h"
#include "mhd.h"

struct bgs_mhd bgs_mhd;

/* Load the library and resolve every function bgs_mhd holds, in its order. Returns 0 or -ENOENT
 * (said in one line).
 */
int mhd_load(void)
{
	static const char *const names[] = {
		"MHD_start_daemon",
		"MHD_stop_daemon",
		"MHD_create_response_from_buffer",
		"MHD_add_response_header",
		"MHD_queue_response",
		"MHD_destroy_response",
		"MHD_suspend_connection",
		"MHD_resume_connection",
	};
	static void *lib;

	_Static_assert(sizeof(names) / sizeof(names[0]) == sizeof(bgs_mhd) / sizeof(void *),
		       "one name per function of struct bgs_mhd");
	return dl_load(BGS_MHD_SONAME, "libmicrohttpd", names, sizeof(names) / sizeof(names[0]),
		       (void **)&bgs_mhd, &lib);
}
