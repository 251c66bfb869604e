/* SPDX-License-Identifier: GPL-2.0 */
/* maglev.h: Maglev lookup tables (NSDI 2016, section 3.4), with backend weights. */
#ifndef BGS_MAGLEV_H
#define BGS_MAGLEV_H

#include <stdbool.h>
#include <stddef.h>
#include <linux/types.h>

/* One backend as the table builder sees it. The key names the backend the same way on every
 * node (family, address and port, not the local slot), so that nodes given the same backends
 * build the same table.
 */
struct maglev_backend {
	__u8 key[20];
	__u32 slot; /* what the table holds */
	__u32 weight; /* 0: takes no position */
	__u32 positions; /* set by maglev_build(): how many it got */
};

bool maglev_is_prime(__u32 m);
bool maglev_size_ok(__u32 m);
void maglev_key(struct maglev_backend *b, const __u32 addr[4], __u16 port, __u8 family);
int maglev_build(struct maglev_backend *be, __u32 n, __u32 m, __u32 *table);

#endif /* BGS_MAGLEV_H */
