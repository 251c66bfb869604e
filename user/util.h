/* SPDX-License-Identifier: GPL-2.0 */
/* util.h: parsing and printing of addresses, colors and names shared by the commands. */
#ifndef BGS_UTIL_H
#define BGS_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <linux/types.h>
#include "bgswitch.h"

#define BGS_ADDRSTR_LEN 64 /* "[v6]:port" and NUL */

struct bgs_endpoint {
	__u32 addr[4]; /* network byte order, IPv4 in addr[0] */
	__u16 port; /* network byte order */
	__u8 family; /* BGS_AF_INET or BGS_AF_INET6 */
};

int parse_endpoint(const char *s, struct bgs_endpoint *ep);
bool endpoint_is_unicast(const struct bgs_endpoint *ep);
int parse_color(const char *s, __u8 *color);
int parse_proto(const char *s, __u8 *proto);
int parse_u32(const char *s, __u32 min, __u32 max, __u32 *out);
int check_name(const char *name);
int parse_duration_ns(const char *s, __u64 min_ns, __u64 max_ns, __u64 *out);
int parse_generation(const char *s, __s64 *out);
int parse_share(const char *s, __u32 *share);
int parse_weight(const char *s, __u16 *weight);
int parse_table_size(const char *s, __u32 *m);
int parse_lb(const char *s, __u8 *lb);
int parse_split_by(const char *s, __u32 *flags);
int check_vip_addr(const char *text, const struct bgs_endpoint *ep);
int check_backend_addr(const char *text, const struct bgs_endpoint *ep);
int check_backend_of(const char *text, const struct bgs_endpoint *ep,
		     const struct bgs_endpoint *vip, const char *svc);

const char *color_name(__u8 color);
__u8 share_color(__u32 share);
const char *share_label(__u32 share);
const char *fmt_share(__u32 share, char *buf, size_t len);
const char *proto_name(__u8 proto);
const char *fmt_addr(const __u32 addr[4], __u8 family, char *buf, size_t len);
const char *fmt_endpoint(const __u32 addr[4], __u16 port, __u8 family, char *buf, size_t len);

__u64 now_ns(void);
void sleep_until_ns(__u64 when_ns);
int bad_args(const char *cmd);
struct option;
extern const char *bgs_cmd_name;
int getopt_cmd(int argc, char **argv, const char *optstring, const struct option *longopts);
void fault_point(const char *name);

#endif /* BGS_UTIL_H */
