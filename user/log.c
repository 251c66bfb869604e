// SPDX-License-Identifier: GPL-2.0
/* log.c: leveled logging to stderr (warnings) and stdout (info), libbpf's included with -v. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <bpf/libbpf.h>

#include "log.h"

int bgs_verbosity = BGS_LOG_INFO;

/* The last warning, without its newline: the audit trail records why a change was refused. */
static char last_warn[256];

/* While set (bgs_log_capture()), the first warning goes here instead of stderr. */
static char *capture_buf;
static size_t capture_len;

/* Capture the warnings of the checks a caller runs (the first one, without its newline) into
 * buf instead of printing them: a validator reuses the commands' own checks and messages and
 * reports one line of its own. bgs_log_capture(NULL, 0) ends it.
 */
void bgs_log_capture(char *buf, size_t len)
{
	capture_buf = len ? buf : NULL;
	capture_len = len;
	if (capture_buf)
		capture_buf[0] = '\0';
}

const char *bgs_log_last_warn(void)
{
	return last_warn;
}

void bgs_log(enum bgs_log_level level, const char *fmt, ...)
{
	va_list ap;

	if (level == BGS_LOG_WARN && capture_buf) {
		size_t n;

		if (capture_buf[0])
			return;
		va_start(ap, fmt);
		vsnprintf(capture_buf, capture_len, fmt, ap);
		va_end(ap);
		n = strlen(capture_buf);
		if (n && capture_buf[n - 1] == '\n')
			capture_buf[n - 1] = '\0';
		return;
	}
	if (level == BGS_LOG_WARN) {
		size_t n;

		va_start(ap, fmt);
		vsnprintf(last_warn, sizeof(last_warn), fmt, ap);
		va_end(ap);
		n = strlen(last_warn);
		if (n && last_warn[n - 1] == '\n')
			last_warn[n - 1] = '\0';
	}
	if ((int)level > bgs_verbosity)
		return;
	va_start(ap, fmt);
	if (level == BGS_LOG_WARN) {
		fputs("bgswitch: ", stderr);
		vfprintf(stderr, fmt, ap);
	} else if (level == BGS_LOG_DEBUG) {
		vfprintf(stderr, fmt, ap);
	} else {
		vfprintf(stdout, fmt, ap);
	}
	va_end(ap);
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	/* libbpf's own warnings are details of an error we report in one line; show them with -v. */
	if (bgs_verbosity < BGS_LOG_DEBUG)
		return 0;
	if (level == LIBBPF_DEBUG && bgs_verbosity < BGS_LOG_DEBUG + 1)
		return 0;
	return vfprintf(stderr, fmt, ap);
}

void bgs_log_setup(int verbosity)
{
	bgs_verbosity = verbosity;
	libbpf_set_print(libbpf_print);
}
