// SPDX-License-Identifier: GPL-2.0
/* dl.c: loading a shared library a few commands need, when they need it (libcurl, libmicrohttpd):
 * linked, such a library and everything it pulls in would be loaded by every command.
 */
#include <dlfcn.h>
#include <errno.h>

#include "dl.h"
#include "log.h"

/* Load soname once (*lib keeps it) and resolve names[0..n) into slots[0..n). Returns 0, or
 * -ENOENT said in one line that names the library as `what`.
 */
int dl_load(const char *soname, const char *what, const char *const *names, size_t n, void **slots,
	    void **lib)
{
	size_t i;

	if (*lib)
		return 0;
	*lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
	if (!*lib) {
		pr_warn("cannot load %s (%s): %s\n", what, soname, dlerror());
		return -ENOENT;
	}
	for (i = 0; i < n; i++) {
		slots[i] = dlsym(*lib, names[i]);
		if (!slots[i]) {
			pr_warn("%s (%s) lacks %s\n", what, soname, names[i]);
			dlclose(*lib);
			*lib = NULL;
			return -ENOENT;
		}
	}
	return 0;
}
