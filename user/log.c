// SPDX-License-Identifier: GPL-2.0
/* log.c: leveled logging to stderr (warnings) and stdout (info), libbpf's included with -v. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <bpf/libbpf.h>

#include "log.h"

int bgs_verbosity = BGS_LOG_INFO;

/* The last warning, without its newline: the audit trail records why a change was refused. */
static char last_warn[1024];

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

/* While set (bgs_log_error_to()), the first warning is also kept here: an operation's error. */
static char *error_buf;
static size_t error_len;

/* Keep the first warning from now on in buf (as one line), besides printing it: an operation
 * returns its error as a value. bgs_log_error_to(NULL, 0) ends it.
 */
void bgs_log_error_to(char *buf, size_t len)
{
	error_buf = len ? buf : NULL;
	error_len = len;
	if (error_buf)
		error_buf[0] = '\0';
}

const char *bgs_log_last_warn(void)
{
	return last_warn;
}

/* A warning as one line: control characters an argument brought in (CR, LF, ESC...) are written
 * as escapes, so that what a user typed can neither split the line nor drive the terminal.
 */
static void escape_line(const char *in, char *out, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (; *in && o + 5 < len; in++) {
		unsigned char ch = *in;

		if (ch == '\n' && !in[1])
			break;
		if (ch >= 0x20 && ch != 0x7f) {
			out[o++] = ch;
			continue;
		}
		out[o++] = '\\';
		if (ch == '\n' || ch == '\r' || ch == '\t') {
			out[o++] = ch == '\n' ? 'n' : ch == '\r' ? 'r' : 't';
			continue;
		}
		out[o++] = 'x';
		out[o++] = hex[ch >> 4];
		out[o++] = hex[ch & 15];
	}
	out[o] = '\0';
}

void bgs_log(enum bgs_log_level level, const char *fmt, ...)
{
	char raw[1024];
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
		va_start(ap, fmt);
		vsnprintf(raw, sizeof(raw), fmt, ap);
		va_end(ap);
		escape_line(raw, last_warn, sizeof(last_warn));
		if (error_buf && !error_buf[0])
			snprintf(error_buf, error_len, "%s", last_warn);
		if (bgs_verbosity >= (int)level)
			fprintf(stderr, "bgswitch: %s\n", last_warn);
		return;
	}
	if ((int)level > bgs_verbosity)
		return;
	va_start(ap, fmt);
	vfprintf(level == BGS_LOG_DEBUG ? stderr : stdout, fmt, ap);
	va_end(ap);
}

/* The kernel's own words on the last netlink request libbpf made ("veth: Peer MTU is too large
 * to set XDP"): an attach that fails says why in its one line.
 */
static char kernel_msg[256];

const char *bgs_log_kernel_msg(void)
{
	return kernel_msg;
}

void bgs_log_kernel_msg_clear(void)
{
	kernel_msg[0] = '\0';
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	static const char tag[] = "libbpf: Kernel error message: ";

	if (level == LIBBPF_WARN && !strncmp(fmt, tag, sizeof(tag) - 1)) {
		va_list cp;
		size_t n;

		va_copy(cp, ap);
		vsnprintf(kernel_msg, sizeof(kernel_msg), fmt + sizeof(tag) - 1, cp);
		va_end(cp);
		n = strlen(kernel_msg);
		while (n && (kernel_msg[n - 1] == '\n' || kernel_msg[n - 1] == '.'))
			kernel_msg[--n] = '\0';
	}
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
