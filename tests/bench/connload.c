// SPDX-License-Identifier: GPL-2.0
/* connload: a new-connection load that records, for every connection, when it started and
 * which backend served it, for the cutover measurement of `make bench`.
 *
 *   connload --addr A.B.C.D --port N --conns C --duration-ms D [--rate R] [--timeout-ms T]
 *            [--max M]
 *
 * Each connection connects, sends one "Connection: close" request and reads the reply to its
 * end. Without --rate, C connections are kept in flight (each one replaced as it ends); with
 * --rate, one connection starts every 1/R s (open loop, so that the start times sample the
 * timeline evenly), at most C in flight (a start with none free is skipped and counted on
 * stderr). Stops starting connections after D ms (or M connections), waits at most T ms for
 * the last ones, and prints one line per connection:
 *
 *   <start_ns> <connected_ns> <end_ns> <outcome>
 *
 * start just before connect() (which sends the SYN), connected just after it returns (a veth
 * peer's XDP program has normally seen the SYN by then: it runs in the softirq that the send
 * raises), end when the reply is complete; times from CLOCK_MONOTONIC (one clock for every
 * network namespace); outcome the first word of the reply body ("blue", "green") or
 * "error:<what>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>

struct slot {
	int fd;
	int sent;
	int len;
	uint64_t start, connected;
	char buf[1024];
};

struct rec {
	uint64_t start, connected, end;
	char what[24];
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct rec *recs;
static size_t nrecs, maxrecs;
static struct sockaddr_in dst = { .sin_family = AF_INET };
static const char req[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

static void record(struct slot *s, const char *what)
{
	if (nrecs < maxrecs) {
		recs[nrecs].start = s->start;
		recs[nrecs].connected = s->connected;
		recs[nrecs].end = now_ns();
		snprintf(recs[nrecs].what, sizeof(recs[nrecs].what), "%s", what);
		nrecs++;
	}
}

static void finish(int ep, struct slot *s, const char *what)
{
	record(s, what);
	epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
	close(s->fd);
	s->fd = -1;
}

/* The first word of the body of a complete reply, or an error. */
static void finish_reply(int ep, struct slot *s)
{
	char word[16] = "error:reply";
	char *body;

	s->buf[s->len] = '\0';
	body = strstr(s->buf, "\r\n\r\n");
	if (!strncmp(s->buf, "HTTP/1.1 200", 12) && body && sscanf(body + 4, "%15s", word) == 1)
		finish(ep, s, word);
	else
		finish(ep, s, "error:reply");
}

static int start(int ep, struct slot *s)
{
	struct epoll_event ev = { .events = EPOLLOUT };

	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		return -1;
	s->sent = s->len = 0;
	ev.data.ptr = s;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev)) {
		close(s->fd);
		s->fd = -1;
		return -1;
	}
	s->start = now_ns();
	if (connect(s->fd, (struct sockaddr *)&dst, sizeof(dst)) && errno != EINPROGRESS) {
		s->connected = now_ns();
		finish(ep, s, "error:connect");
		return 0;
	}
	s->connected = now_ns();
	return 0;
}

int main(int argc, char **argv)
{
	long conns = 16, duration_ms = 1000, timeout_ms = 2000, max = 1000000, port = 0, rate = 0;
	uint64_t next, skipped = 0;
	long started_open = 0;
	struct epoll_event evs[256];
	const char *addr = NULL;
	uint64_t t_end, t_hard;
	struct slot *slots;
	long i, active;
	size_t k;

	for (i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--addr"))
			addr = argv[i + 1];
		else if (!strcmp(argv[i], "--port"))
			port = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--conns"))
			conns = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--duration-ms"))
			duration_ms = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--timeout-ms"))
			timeout_ms = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--max"))
			max = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--rate"))
			rate = atol(argv[i + 1]);
		else
			break;
	}
	if (i != argc || !addr || inet_pton(AF_INET, addr, &dst.sin_addr) != 1 || port <= 0 ||
	    port > 65535 || conns < 1 || conns > 4096 || duration_ms < 1 || duration_ms > 600000 ||
	    max < 1 || max > 10000000 || rate < 0 || rate > 1000000) {
		fprintf(stderr, "usage: connload --addr A.B.C.D --port N --conns C --duration-ms D "
				"[--rate R] [--timeout-ms T] [--max M]\n");
		return 2;
	}
	dst.sin_port = htons((uint16_t)port);
	maxrecs = (size_t)max;
	recs = calloc(maxrecs, sizeof(*recs));
	slots = calloc(conns, sizeof(*slots));
	int ep = epoll_create1(EPOLL_CLOEXEC);

	if (!recs || !slots || ep < 0) {
		perror("connload");
		return 1;
	}
	t_end = now_ns() + (uint64_t)duration_ms * 1000000ull;
	t_hard = t_end + (uint64_t)timeout_ms * 1000000ull;
	for (i = 0; i < conns; i++)
		slots[i].fd = -1;
	next = now_ns();
	for (;;) {
		uint64_t now = now_ns(), wait_ns = 10000000ull;
		struct timespec ts;
		int n;

		for (i = 0; i < conns; i++) {
			struct slot *s = &slots[i];

			if (s->fd >= 0 && now > s->start &&
			    now - s->start > (uint64_t)timeout_ms * 1000000ull)
				finish(ep, s, "error:timeout");
		}
		/* Closed loop: every free slot starts a connection at once. Paced: one start
		 * every 1/rate s, on a free slot, or skipped (and counted) when none is free.
		 */
		for (i = 0; i < conns && now < t_end; i++) {
			struct slot *s = &slots[i];

			if (s->fd >= 0 || nrecs + started_open >= maxrecs)
				continue;
			if (rate && next > now)
				break;
			start(ep, s);
			if (rate)
				next += 1000000000ull / (uint64_t)rate;
		}
		while (rate && now < t_end && next <= now) {
			skipped++;
			next += 1000000000ull / (uint64_t)rate;
		}
		active = 0;
		for (i = 0; i < conns; i++)
			active += slots[i].fd >= 0;
		started_open = active;
		if ((!active && now >= t_end) || now > t_hard)
			break;
		if (rate && now < t_end && next - now < wait_ns)
			wait_ns = next - now;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)wait_ns;
		n = epoll_pwait2(ep, evs, 256, &ts, NULL);
		for (int e = 0; e < n; e++) {
			struct slot *s = evs[e].data.ptr;
			struct epoll_event ev = { .events = EPOLLIN, .data.ptr = s };

			if (s->fd < 0)
				continue;
			if (!s->sent) {
				int err = 0;
				socklen_t el = sizeof(err);

				getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
				if (err) {
					finish(ep, s,
					       err == ECONNREFUSED ? "error:refused" :
					       err == ENETUNREACH || err == EHOSTUNREACH ?
								     "error:unreachable" :
								     "error:connect");
					continue;
				}
				if (write(s->fd, req, sizeof(req) - 1) != sizeof(req) - 1) {
					finish(ep, s, "error:write");
					continue;
				}
				s->sent = 1;
				epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
				continue;
			}
			ssize_t r = read(s->fd, s->buf + s->len, sizeof(s->buf) - 1 - s->len);

			if (r > 0) {
				s->len += r;
				if (s->len < (int)sizeof(s->buf) - 1)
					continue;
			} else if (r < 0 && errno == EAGAIN) {
				continue;
			} else if (r < 0) {
				finish(ep, s, errno == ECONNRESET ? "error:reset" : "error:read");
				continue;
			}
			finish_reply(ep, s);
		}
	}
	for (i = 0; i < conns; i++)
		if (slots[i].fd >= 0)
			finish(ep, &slots[i], "error:timeout");
	fprintf(stderr,
		"connload: %zu connections, %llu paced starts skipped (all %ld in flight)\n", nrecs,
		(unsigned long long)skipped, conns);
	for (k = 0; k < nrecs; k++)
		printf("%llu %llu %llu %s\n", (unsigned long long)recs[k].start,
		       (unsigned long long)recs[k].connected, (unsigned long long)recs[k].end,
		       recs[k].what);
	return 0;
}
