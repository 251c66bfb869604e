/* SPDX-License-Identifier: GPL-2.0 */
/* probe.h: health probes of backends from the node: TCP connect, or an HTTP GET. */
#ifndef BGS_PROBE_H
#define BGS_PROBE_H

#include <stdbool.h>
#include <stddef.h>
#include <linux/types.h>
#include "util.h"

#define BGS_CHECK_TIMEOUT_NS 1000000000ULL /* --check-timeout default: 1s */
#define BGS_CHECK_PATH_MAX 200

struct bgs_probe {
	struct bgs_endpoint ep; /* the backend */
	bool ok;
	char error[96]; /* why it failed */
	__u64 elapsed_ns;
	/* private to probe_run() */
	int fd;
	int phase;
	size_t sent, got;
	char buf[256];
};

/* What the checks before a flip or a rollback do (--check-http, --check-timeout, --no-check). */
struct bgs_check_opts {
	const char *http_path; /* NULL: a TCP connect */
	__u64 timeout_ns;
	bool skip;
};

int check_http_path(const char *path);
int probe_run(struct bgs_probe *p, size_t n, const char *http_path, __u64 timeout_ns);

#endif /* BGS_PROBE_H */
