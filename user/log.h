/* SPDX-License-Identifier: GPL-2.0 */
/* log.h: pr_warn/pr_info/pr_debug, and libbpf's messages routed through them. */
#ifndef BGS_LOG_H
#define BGS_LOG_H

#include <stddef.h>

enum bgs_log_level {
	BGS_LOG_WARN = 0,
	BGS_LOG_INFO = 1,
	BGS_LOG_DEBUG = 2,
};

extern int bgs_verbosity;

void bgs_log(enum bgs_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bgs_log_setup(int verbosity);
const char *bgs_log_last_warn(void);
void bgs_log_capture(char *buf, size_t len);
void bgs_log_error_to(char *buf, size_t len);
const char *bgs_log_kernel_msg(void);
void bgs_log_kernel_msg_clear(void);

#define pr_warn(...) bgs_log(BGS_LOG_WARN, __VA_ARGS__)
#define pr_info(...) bgs_log(BGS_LOG_INFO, __VA_ARGS__)
#define pr_debug(...) bgs_log(BGS_LOG_DEBUG, __VA_ARGS__)

#endif /* BGS_LOG_H */
