// SPDX-License-Identifier: GPL-2.0
/* audit.c: the audit trail of changes: one line per change, to syslog and to a log file.
 *
 * A line reads
 *   2026-11-28T10:00:53Z user=alice service=web action=flip from=blue to=green
 *   generation=5->6 result=done reason="deploy 42"
 * (on one line). A value with a blank, a quote or a control character is quoted, with '"' and
 * '\' escaped and control characters written as \xNN. The file is opened before the change, so
 * that a trail that cannot be written refuses the change instead of losing its record.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "audit.h"
#include "log.h"

const char *bgs_audit_path;

static const char *audit_path(void)
{
	const char *env = getenv("BGSWITCH_AUDIT_LOG");

	if (bgs_audit_path)
		return bgs_audit_path;
	return env && *env ? env : BGS_DEFAULT_AUDIT_LOG;
}

int audit_check_reason(const char *reason)
{
	if (strlen(reason) > BGS_REASON_MAX) {
		pr_warn("--reason is longer than %d characters\n", BGS_REASON_MAX);
		return -EINVAL;
	}
	return 0;
}

/* mkdir -p of the directory that holds path. */
static int make_parent(const char *path)
{
	char dir[PATH_MAX], *p;

	if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
		return -ENAMETOOLONG;
	p = strrchr(dir, '/');
	if (!p || p == dir)
		return 0;
	*p = '\0';
	for (p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(dir, 0750) && errno != EEXIST)
		return -errno;
	return 0;
}

int audit_open(struct bgs_audit *au, const char *action, const char *reason)
{
	const char *path = audit_path();
	int err;

	memset(au, 0, sizeof(*au));
	au->fd = -1;
	au->action = action;
	au->reason = reason;
	if (path[0] != '/') {
		pr_warn("audit log '%s' must be an absolute path\n", path);
		return -EINVAL;
	}
	err = make_parent(path);
	if (!err) {
		au->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
		if (au->fd < 0)
			err = -errno;
	}
	if (err) {
		pr_warn("cannot open the audit log %s: %s (--audit-log or BGSWITCH_AUDIT_LOG chooses "
			"another)\n",
			path, strerror(-err));
		return err;
	}
	return 0;
}

/* The operator: the user sudo ran us for, else the login name of our uid. */
static void audit_user(char *buf, size_t len)
{
	const char *sudo = getenv("SUDO_USER");
	struct passwd *pw;

	if (sudo && *sudo) {
		snprintf(buf, len, "%s", sudo);
		return;
	}
	pw = getpwuid(getuid());
	if (pw && pw->pw_name && *pw->pw_name)
		snprintf(buf, len, "%s", pw->pw_name);
	else
		snprintf(buf, len, "%u", (unsigned int)getuid());
}

/* Append " key=value" to buf (of size len, holding *used bytes), quoting when needed. */
static void put(char *buf, size_t len, size_t *used, const char *key, const char *value)
{
	bool quote = !*value;
	const char *v;
	size_t n;

	for (v = value; *v && !quote; v++)
		quote = *v == ' ' || *v == '"' || *v == '\\' || *v == '=' ||
			(unsigned char)*v < 0x20 || *v == 0x7f;
	n = snprintf(buf + *used, len - *used, " %s=%s", key, quote ? "\"" : "");
	*used = *used + n < len ? *used + n : len - 1;
	for (v = value; *v && *used < len - 8; v++) {
		unsigned char c = *v;

		if (c == '"' || c == '\\')
			*used += snprintf(buf + *used, len - *used, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			*used += snprintf(buf + *used, len - *used, "\\x%02x", c);
		else
			buf[(*used)++] = c;
	}
	if (quote && *used < len - 1)
		buf[(*used)++] = '"';
	buf[*used] = '\0';
}

void audit_record(struct bgs_audit *au, int err)
{
	char body[896], line[1024], user[64], gens[32], stamp[32];
	size_t used = 0;
	struct tm tm;
	time_t now;
	ssize_t n;
	int len;

	if (au->fd < 0 || au->recorded || !au->service[0])
		return;
	au->recorded = true;
	body[0] = '\0';
	audit_user(user, sizeof(user));
	put(body, sizeof(body), &used, "user", user);
	put(body, sizeof(body), &used, "service", au->service);
	put(body, sizeof(body), &used, "action", au->action);
	put(body, sizeof(body), &used, "from", au->from[0] ? au->from : "-");
	put(body, sizeof(body), &used, "to", au->to[0] ? au->to : "-");
	snprintf(gens, sizeof(gens), "%u->%u", au->gen_before,
		 err ? au->gen_before : au->gen_after);
	put(body, sizeof(body), &used, "generation", gens);
	put(body, sizeof(body), &used, "result", err ? "refused" : "done");
	if (err)
		put(body, sizeof(body), &used, "error",
		    *bgs_log_last_warn() ? bgs_log_last_warn() : strerror(-err));
	if (au->detail[0])
		put(body, sizeof(body), &used, "detail", au->detail);
	if (au->reason)
		put(body, sizeof(body), &used, "reason", au->reason);

	openlog("bgswitch", LOG_PID, LOG_USER);
	syslog(LOG_INFO, "%s", body + 1);
	closelog();

	now = time(NULL);
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	len = snprintf(line, sizeof(line), "%s%s\n", stamp, body);
	/* One write: O_APPEND keeps the lines of concurrent commands whole. */
	n = write(au->fd, line, len);
	if (n != len)
		pr_warn("cannot write the audit log: %s\n",
			n < 0 ? strerror(errno) : "short write");
}

void audit_close(struct bgs_audit *au)
{
	if (au->fd >= 0)
		close(au->fd);
	au->fd = -1;
}
