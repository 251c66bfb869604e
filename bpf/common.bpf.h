/* SPDX-License-Identifier: GPL-2.0 */
/* common.bpf.h: includes, the few #defines vmlinux.h lacks, and the BGS_CONTINUE convention. */
#ifndef BGS_COMMON_BPF_H
#define BGS_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "bgswitch.h"

/* Constants from uapi headers that vmlinux.h (BTF holds types, not macros) does not carry. */
#define ETH_ALEN 6
#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define BPF_F_PSEUDO_HDR (1ULL << 4)
#define BPF_F_MARK_MANGLED_0 (1ULL << 5)

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

static __always_inline bool addr_eq(const __u32 *a, const __u32 *b)
{
	return !((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]));
}

/* A handler returns a verdict, or BGS_CONTINUE to let the caller go on to the next step. */
#define BGS_CONTINUE (-1)

/* A flow's last_seen is rewritten only when it is older than this, to spare the cache line. */
#define BGS_TOUCH_NS (100ULL * 1000 * 1000)

#endif /* BGS_COMMON_BPF_H */
