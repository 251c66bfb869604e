// SPDX-License-Identifier: GPL-2.0
/* util.c: parsing and printing of addresses, colors and names shared by the commands. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "maglev.h"
#include "util.h"

/* "A.B.C.D:PORT" or "[V6]:PORT" with a port from 1 to 65535. */
int parse_endpoint(const char *s, struct bgs_endpoint *ep)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon, *hs = s;
	size_t hlen;
	__u32 port;

	memset(ep, 0, sizeof(*ep));
	if (s[0] == '[') {
		const char *end = strchr(s, ']');

		if (!end || end[1] != ':')
			goto bad;
		hs = s + 1;
		hlen = end - hs;
		colon = end + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			goto bad;
		hlen = colon - s;
	}
	if (!hlen || hlen >= sizeof(host))
		goto bad;
	memcpy(host, hs, hlen);
	host[hlen] = '\0';
	if (parse_u32(colon + 1, 1, 65535, &port)) {
		pr_warn("'%s': port must be a number from 1 to 65535\n", s);
		return -EINVAL;
	}
	ep->port = htons(port);
	if (s[0] != '[' && inet_pton(AF_INET, host, &ep->addr[0]) == 1) {
		ep->family = BGS_AF_INET;
		return 0;
	}
	if (s[0] == '[' && inet_pton(AF_INET6, host, ep->addr) == 1) {
		ep->family = BGS_AF_INET6;
		return 0;
	}
bad:
	pr_warn("'%s' is not an address and port (A.B.C.D:PORT or [IPV6]:PORT)\n", s);
	return -EINVAL;
}

int parse_color(const char *s, __u8 *color)
{
	if (!strcmp(s, "blue"))
		*color = BGS_BLUE;
	else if (!strcmp(s, "green"))
		*color = BGS_GREEN;
	else {
		pr_warn("unknown color '%s' (blue or green)\n", s);
		return -EINVAL;
	}
	return 0;
}

/* "10%", "10", "12.5%" or "0.01%": a share of new flows in 0.01 % units (0 to BGS_SHARE_ALL).
 * Parsed as decimal text, not as a float, so that "0.07%" is exactly 7.
 */
int parse_share(const char *s, __u32 *share)
{
	const char *p = s;
	__u32 whole = 0, frac = 0, nd = 0, ni = 0;

	while (*p >= '0' && *p <= '9' && ni < 4)
		whole = whole * 10 + (*p++ - '0'), ni++;
	if (*p == '.') {
		p++;
		while (*p >= '0' && *p <= '9' && nd < 2)
			frac = frac * 10 + (*p++ - '0'), nd++;
		if (!nd)
			goto bad;
	}
	if (*p == '%')
		p++;
	if (*p || !ni)
		goto bad;
	while (nd++ < 2)
		frac *= 10;
	*share = whole * 100 + frac;
	if (*share > BGS_SHARE_ALL)
		goto bad;
	return 0;
bad:
	pr_warn("'%s' is not a share from 0%% to 100%% in steps of 0.01%% (like 10%% or 2.5%%)\n",
		s);
	return -EINVAL;
}

int parse_weight(const char *s, __u16 *weight)
{
	__u32 v;

	if (parse_u32(s, 0, BGS_WEIGHT_MAX, &v)) {
		pr_warn("--weight '%s' is not a number from 0 to %d\n", s, BGS_WEIGHT_MAX);
		return -EINVAL;
	}
	*weight = v;
	return 0;
}

int parse_proto(const char *s, __u8 *proto)
{
	if (!strcmp(s, "tcp"))
		*proto = IPPROTO_TCP;
	else if (!strcmp(s, "udp"))
		*proto = IPPROTO_UDP;
	else {
		pr_warn("unknown protocol '%s' (tcp or udp)\n", s);
		return -EINVAL;
	}
	return 0;
}

/* --table-size M: see maglev_size_ok(). */
int parse_table_size(const char *s, __u32 *m)
{
	if (parse_u32(s, 0, 0xffffffffU, m) || !maglev_size_ok(*m)) {
		pr_warn("--table-size '%s' is not a prime from %d to %d (like 16381 or 65537)\n", s,
			BGS_TABLE_MIN, BGS_TABLE_MAX);
		return -EINVAL;
	}
	return 0;
}

/* --lb maglev|modulo */
int parse_lb(const char *s, __u8 *lb)
{
	if (!strcmp(s, "maglev")) {
		*lb = BGS_LB_MAGLEV;
	} else if (!strcmp(s, "modulo")) {
		*lb = BGS_LB_MODULO;
	} else {
		pr_warn("unknown --lb '%s' (maglev or modulo)\n", s);
		return -EINVAL;
	}
	return 0;
}

/* --split-by flow|client: BGS_VIP_SPLIT_CLIENT in *flags. */
int parse_split_by(const char *s, __u32 *flags)
{
	if (!strcmp(s, "flow")) {
		*flags &= ~BGS_VIP_SPLIT_CLIENT;
	} else if (!strcmp(s, "client")) {
		*flags |= BGS_VIP_SPLIT_CLIENT;
	} else {
		pr_warn("unknown --split-by '%s' (flow or client)\n", s);
		return -EINVAL;
	}
	return 0;
}

/* A VIP (text: as given) is a unicast address. */
int check_vip_addr(const char *text, const struct bgs_endpoint *ep)
{
	if (endpoint_is_unicast(ep))
		return 0;
	pr_warn("'%s': a VIP must be a unicast address (not unspecified, loopback, multicast or "
		"broadcast)\n",
		text);
	return -EINVAL;
}

/* A backend (text: as given) is a unicast address. */
int check_backend_addr(const char *text, const struct bgs_endpoint *ep)
{
	if (endpoint_is_unicast(ep))
		return 0;
	pr_warn("'%s': a backend must be a unicast address (not unspecified, loopback, multicast "
		"or broadcast)\n",
		text);
	return -EINVAL;
}

/* A backend of service svc (VIP vip): of the VIP's family, and not the VIP itself. The VIP's
 * address on another port is a backend (two versions of an app on two ports of the node).
 */
int check_backend_of(const char *text, const struct bgs_endpoint *ep,
		     const struct bgs_endpoint *vip, const char *svc)
{
	if (ep->family != vip->family) {
		pr_warn("'%s' is not of the address family of service '%s'\n", text, svc);
		return -EAFNOSUPPORT;
	}
	if (!memcmp(ep->addr, vip->addr, sizeof(ep->addr)) && ep->port == vip->port) {
		pr_warn("'%s': a backend cannot be the VIP of '%s' itself\n", text, svc);
		return -EINVAL;
	}
	return 0;
}

int parse_u32(const char *s, __u32 min, __u32 max, __u32 *out)
{
	unsigned long long v;
	char *end;

	/* Digits only: strtoull() would also take leading blanks and a sign (" 3", "+3"). */
	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

/* A service name: 1 to BGS_NAME_LEN-1 characters of [A-Za-z0-9._-], not starting with '-'. */
int check_name(const char *name)
{
	size_t len = strlen(name), i;

	if (!len || len >= BGS_NAME_LEN || name[0] == '-')
		goto bad;
	for (i = 0; i < len; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			goto bad;
	}
	return 0;
bad:
	pr_warn("'%s' is not a valid service name (1-%d of A-Z a-z 0-9 . _ -)\n", name,
		BGS_NAME_LEN - 1);
	return -EINVAL;
}

const char *color_name(__u8 color)
{
	switch (color) {
	case BGS_BLUE:
		return "blue";
	case BGS_GREEN:
		return "green";
	default:
		return "none";
	}
}

/* The one color a share sends every new flow to, or BGS_COLOR_NONE for a split. */
__u8 share_color(__u32 share)
{
	if (!share)
		return BGS_BLUE;
	if (share >= BGS_SHARE_ALL)
		return BGS_GREEN;
	return BGS_COLOR_NONE;
}

/* "blue", "green", or "split": what `status` calls the active color. */
const char *share_label(__u32 share)
{
	__u8 c = share_color(share);

	return c == BGS_COLOR_NONE ? "split" : color_name(c);
}

/* "12.5%": the green share, without trailing zeros. */
const char *fmt_share(__u32 share, char *buf, size_t len)
{
	if (share % 100 == 0)
		snprintf(buf, len, "%u%%", share / 100);
	else if (share % 10 == 0)
		snprintf(buf, len, "%u.%u%%", share / 100, share % 100 / 10);
	else
		snprintf(buf, len, "%u.%02u%%", share / 100, share % 100);
	return buf;
}

const char *proto_name(__u8 proto)
{
	return proto == IPPROTO_UDP ? "udp" : proto == IPPROTO_TCP ? "tcp" : "?";
}

const char *fmt_addr(const __u32 addr[4], __u8 family, char *buf, size_t len)
{
	if (!inet_ntop(family == BGS_AF_INET6 ? AF_INET6 : AF_INET, addr, buf, len))
		snprintf(buf, len, "?");
	return buf;
}

const char *fmt_endpoint(const __u32 addr[4], __u16 port, __u8 family, char *buf, size_t len)
{
	char a[INET6_ADDRSTRLEN];

	fmt_addr(addr, family, a, sizeof(a));
	if (family == BGS_AF_INET6)
		snprintf(buf, len, "[%s]:%u", a, ntohs(port));
	else
		snprintf(buf, len, "%s:%u", a, ntohs(port));
	return buf;
}

/* The clock bpf_ktime_get_coarse_ns() reads. */
__u64 now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (__u64)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* A duration: a number with an optional unit, ms, s (the default), m or h. */
int parse_duration_ns(const char *s, __u64 min_ns, __u64 max_ns, __u64 *out)
{
	static const struct {
		const char *unit;
		__u64 ns;
	} units[] = { { "ms", 1000000ULL },
		      { "s", 1000000000ULL },
		      { "", 1000000000ULL },
		      { "m", 60000000000ULL },
		      { "h", 3600000000000ULL } };
	unsigned long long v;
	char *end;
	size_t i;

	if (!s || *s < '0' || *s > '9')
		goto bad;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || v > 1000000000ULL)
		goto bad;
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].unit))
			continue;
		*out = v * units[i].ns;
		if (*out < min_ns || *out > max_ns)
			goto bad;
		return 0;
	}
bad:
	pr_warn("'%s' is not a duration from %llums to %llus (like 500ms, 30s, 15m, 1h)\n",
		s ? s : "", (unsigned long long)(min_ns / 1000000ULL),
		(unsigned long long)(max_ns / 1000000000ULL));
	return -EINVAL;
}

/* A unicast address a service or a backend can have: not unspecified, multicast, broadcast or
 * loopback.
 */
bool endpoint_is_unicast(const struct bgs_endpoint *ep)
{
	const __u8 *b = (const __u8 *)ep->addr;
	static const __u8 zero[16], loop6[16] = { [15] = 1 };

	if (ep->family == BGS_AF_INET)
		return b[0] != 0 && b[0] != 127 && b[0] < 224;
	return memcmp(b, zero, 16) && memcmp(b, loop6, 16) && b[0] != 0xff;
}

/* The command being run, as option errors name it ("service add"); set by main(). */
const char *bgs_cmd_name = "";

/* getopt_long() for the commands, with errors of our own: one line through pr_warn (so control
 * characters are escaped) that names the option and where help is, instead of glibc's. Returns
 * what getopt_long() does, and '?' after printing the error.
 */
int getopt_cmd(int argc, char **argv, const char *optstring, const struct option *longopts)
{
	const char *lead = optstring[0] == '+' ? "+" : "", *arg, *sp;
	char spec[128], shortopt[3] = { '-', 0, 0 };
	int c, saved = opterr;

	snprintf(spec, sizeof(spec), "%s:%s", lead, optstring + strlen(lead));
	opterr = 0;
	c = getopt_long(argc, argv, spec, longopts, NULL);
	opterr = saved;
	if (c != '?' && c != ':')
		return c;
	/* A long option is named as it was written; a short one by its letter. */
	arg = optind > 0 && optind <= argc ? argv[optind - 1] : "";
	if (strncmp(arg, "--", 2)) {
		shortopt[1] = optopt;
		arg = shortopt;
	}
	sp = *bgs_cmd_name ? " " : "";
	if (c == ':')
		pr_warn("option '%s' needs a value (see 'bgswitch%s%s --help')\n", arg, sp,
			bgs_cmd_name);
	else if (optopt && !strncmp(arg, "--", 2) && strchr(arg, '='))
		pr_warn("option '%.*s' takes no value (see 'bgswitch%s%s --help')\n",
			(int)(strchr(arg, '=') - arg), arg, sp, bgs_cmd_name);
	else
		pr_warn("unknown option '%s' (see 'bgswitch%s%s --help')\n", arg, sp, bgs_cmd_name);
	return '?';
}

/* Usage error of a command: a wrong number of arguments. */
int bad_args(const char *cmd)
{
	pr_warn("wrong number of arguments (see 'bgswitch %s --help')\n", cmd);
	return -EINVAL;
}

/* Sleep until now_ns() reaches when_ns (CLOCK_MONOTONIC), waking up for nothing else. */
void sleep_until_ns(__u64 when_ns)
{
	struct timespec ts = { .tv_sec = when_ns / 1000000000ULL,
			       .tv_nsec = when_ns % 1000000000ULL };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* A test hook. BGSWITCH_FAULT=NAME makes the command SIGKILL itself when it reaches the point
 * called NAME, as a crash there would; BGSWITCH_FAULT=NAME:sleep=MS makes it pause there for MS
 * milliseconds instead (to widen a race window). The points are listed in bgswitch(8).
 */
void fault_point(const char *name)
{
	const char *spec = getenv("BGSWITCH_FAULT");
	size_t n = strlen(name);
	__u32 ms;

	if (!spec || strncmp(spec, name, n) || (spec[n] && spec[n] != ':'))
		return;
	if (!spec[n]) {
		pr_debug("fault point %s: SIGKILL\n", name);
		kill(getpid(), SIGKILL);
		return;
	}
	if (!strncmp(spec + n, ":sleep=", 7) && !parse_u32(spec + n + 7, 0, 600000, &ms)) {
		pr_debug("fault point %s: sleeping %u ms\n", name, ms);
		sleep_until_ns(now_ns() + ms * 1000000ULL);
	}
}

/* --if-generation G: a generation, 0 to 4294967295. */
int parse_generation(const char *s, __s64 *out)
{
	__u32 g;

	if (parse_u32(s, 0, 0xffffffffU, &g)) {
		pr_warn("--if-generation '%s' is not a generation (0 to 4294967295)\n", s);
		return -EINVAL;
	}
	*out = g;
	return 0;
}
