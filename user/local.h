/* SPDX-License-Identifier: GPL-2.0 */
/* local.h: the cgroup socket hooks' pins, for attach and detach (user/local.c). */
#ifndef BGS_LOCAL_H
#define BGS_LOCAL_H

struct bpf_object;

int local_progs_install(struct bpf_object *obj);
void local_purge(void);

#endif /* BGS_LOCAL_H */
