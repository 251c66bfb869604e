/* SPDX-License-Identifier: GPL-2.0 */
/* csum.bpf.h: incremental Internet checksum updates (RFC 1624) for rewrites done in place. */
#ifndef BGS_CSUM_BPF_H
#define BGS_CSUM_BPF_H

#include "common.bpf.h"

/* A change is accumulated as a ones'-complement difference, then applied to each checksum
 * that covers the changed bytes: HC' = ~(~HC + ~m + m').
 */
static __always_inline __u32 csum_diff4(__u32 diff, __u32 from, __u32 to)
{
	return diff + (~from & 0xffff) + (~from >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline __u32 csum_diff2(__u32 diff, __u16 from, __u16 to)
{
	return diff + (__u16)~from + to;
}

/* The difference of an address change: one word for IPv4, four for IPv6. */
static __always_inline __u32 csum_diff_addr(__u32 diff, const __u32 *from, const __u32 *to,
					    __u8 family)
{
	int i;

	diff = csum_diff4(diff, from[0], to[0]);
	if (family == BGS_AF_INET6) {
#pragma unroll
		for (i = 1; i < 4; i++)
			diff = csum_diff4(diff, from[i], to[i]);
	}
	return diff;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Apply a difference to a checksum field. */
static __always_inline void csum_apply(__u16 *sum, __u32 diff)
{
	*sum = ~csum_fold((__u16) ~*sum + csum_fold(diff));
}

/* The same for a UDP checksum: zero means "none" (IPv4) and is left alone, and a result of
 * zero is sent as 0xffff.
 */
static __always_inline void csum_apply_udp(__u16 *sum, __u32 diff)
{
	if (!*sum)
		return;
	csum_apply(sum, diff);
	if (!*sum)
		*sum = 0xffff;
}

#endif /* BGS_CSUM_BPF_H */
