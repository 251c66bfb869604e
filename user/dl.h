/* SPDX-License-Identifier: GPL-2.0 */
/* dl.h: loading a shared library a few commands need, when they need it (libcurl, libmicrohttpd). */
#ifndef BGS_DL_H
#define BGS_DL_H

#include <stddef.h>

int dl_load(const char *soname, const char *what, const char *const *names, size_t n, void **slots,
	    void **lib);

#endif /* BGS_DL_H */
