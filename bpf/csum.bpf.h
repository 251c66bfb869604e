/* SPDX-License-Identifier: GPL-2.0 */
/* csum.bpf.h: incremental Internet checksum updates (RFC 1624) for rewrites done in place. */
#ifndef BGS_CSUM_BPF_H
#define BGS_CSUM_BPF_H

#include "common.bpf.h"

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* HC' = ~(~HC + ~m + m') for a 32-bit field changing from 'from' to 'to'. */
static __always_inline void csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 s = (__u16) ~*sum;

	s += (~from & 0xffff) + (~from >> 16) + (to & 0xffff) + (to >> 16);
	*sum = ~csum_fold(s);
}

/* The same for a 16-bit field. */
static __always_inline void csum_replace2(__u16 *sum, __u16 from, __u16 to)
{
	__u32 s = (__u16) ~*sum;

	s += (__u16)~from + to;
	*sum = ~csum_fold(s);
}

/* A UDP checksum of zero means "none" (IPv4): leave it, and never produce zero. */
static __always_inline void csum_udp_replace4(__u16 *sum, __u32 from, __u32 to)
{
	if (!*sum)
		return;
	csum_replace4(sum, from, to);
	if (!*sum)
		*sum = 0xffff;
}

static __always_inline void csum_udp_replace2(__u16 *sum, __u16 from, __u16 to)
{
	if (!*sum)
		return;
	csum_replace2(sum, from, to);
	if (!*sum)
		*sum = 0xffff;
}

#endif /* BGS_CSUM_BPF_H */
