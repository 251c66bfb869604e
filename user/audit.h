/* SPDX-License-Identifier: GPL-2.0 */
/* audit.h: the audit trail of changes: one line per change, to syslog and to a log file. */
#ifndef BGS_AUDIT_H
#define BGS_AUDIT_H

#include <stdbool.h>
#include <linux/types.h>
#include "bgswitch.h"
#include "util.h"

#define BGS_DEFAULT_AUDIT_LOG "/var/lib/bgswitch/audit.log"
#define BGS_REASON_MAX 200

/* --audit-log; when NULL, $BGSWITCH_AUDIT_LOG, else BGS_DEFAULT_AUDIT_LOG. */
extern const char *bgs_audit_path;

/* One change as the trail records it. A command fills service, from, to and the generations
 * as it learns them; audit_record() writes the line once: "done", or "refused" with the last
 * warning when err is not 0. Nothing is written before the service is known (bad input).
 */
struct bgs_audit {
	int fd;
	bool recorded;
	const char *action; /* flip, rollback, backend-add, backend-del, service-add, service-del */
	const char *reason; /* --reason, or NULL */
	char service[BGS_NAME_LEN];
	char from[BGS_ADDRSTR_LEN + 8];
	char to[BGS_ADDRSTR_LEN + 8];
	char detail[256];
	__u32 gen_before;
	__u32 gen_after;
};

int audit_check_reason(const char *reason);
int audit_open(struct bgs_audit *au, const char *action, const char *reason);
void audit_record(struct bgs_audit *au, int err);
void audit_close(struct bgs_audit *au);

#endif /* BGS_AUDIT_H */
