// SPDX-License-Identifier: GPL-2.0
/* sockbench: the cost of connect() to a VIP through bgswitch's socket hooks against connect()
 * straight to the backend, for `make bench` (tests/bench/localbench.py).
 *
 *   sockbench --proto udp|tcp --backend A.B.C.D:PORT [--vip A.B.C.D:PORT] --rounds R --iters N
 *
 * One iteration is socket(), connect(), close() (TCP: also accept() and close() of the
 * accepted socket, from a listener on the backend address that sockbench opens itself, so the
 * handshake runs inside the kernel over loopback). Each round times N iterations to the VIP,
 * then N straight to the backend, and prints one line:
 *
 *   <ns per iteration to the VIP> <ns per iteration to the backend>
 *
 * (the VIP column is 0 without --vip). Run it in the namespace the hooks serve.
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
#include <sys/socket.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
	char host[64];
	const char *colon = strrchr(s, ':');

	if (!colon || (size_t)(colon - s) >= sizeof(host))
		return -1;
	memcpy(host, s, colon - s);
	host[colon - s] = '\0';
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons(atoi(colon + 1));
	return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

/* One iteration; 0, or -1 with errno set. */
static int one(const struct sockaddr_in *to, int type, int lfd)
{
	int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0), afd, err = 0;

	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)to, sizeof(*to)))
		err = -1;
	if (!err && lfd >= 0) {
		afd = accept(lfd, NULL, NULL);
		if (afd < 0)
			err = -1;
		else
			close(afd);
	}
	close(fd);
	return err;
}

/* Mean ns of n iterations to `to`. */
static double batch(const struct sockaddr_in *to, int type, int lfd, long n)
{
	uint64_t t0 = now_ns();
	long i;

	for (i = 0; i < n; i++) {
		if (one(to, type, lfd)) {
			fprintf(stderr, "sockbench: connect to %s:%u: %s\n",
				inet_ntoa(to->sin_addr), ntohs(to->sin_port), strerror(errno));
			exit(1);
		}
	}
	return (double)(now_ns() - t0) / n;
}

static int listener(const struct sockaddr_in *at)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, (const struct sockaddr *)at, sizeof(*at)) || listen(fd, 1024)) {
		perror("sockbench: listener");
		exit(1);
	}
	return fd;
}

int main(int argc, char **argv)
{
	struct sockaddr_in vip, be;
	const char *proto = "udp";
	long rounds = 5, iters = 10000, r;
	int i, type, lfd = -1, have_vip = 0, have_be = 0;

	for (i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--proto"))
			proto = argv[i + 1];
		else if (!strcmp(argv[i], "--vip"))
			have_vip = !parse_addr(argv[i + 1], &vip);
		else if (!strcmp(argv[i], "--backend"))
			have_be = !parse_addr(argv[i + 1], &be);
		else if (!strcmp(argv[i], "--rounds"))
			rounds = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--iters"))
			iters = atol(argv[i + 1]);
		else
			break;
	}
	if (i != argc || !have_be || rounds < 1 || iters < 1 ||
	    (strcmp(proto, "udp") && strcmp(proto, "tcp"))) {
		fprintf(stderr, "usage: sockbench --proto udp|tcp --backend A:P [--vip A:P] "
				"--rounds R --iters N\n");
		return 2;
	}
	type = strcmp(proto, "tcp") ? SOCK_DGRAM : SOCK_STREAM;
	if (type == SOCK_STREAM)
		lfd = listener(&be);
	for (r = 0; r < rounds; r++) {
		double v = have_vip ? batch(&vip, type, lfd, iters) : 0;
		double d = batch(&be, type, lfd, iters);

		printf("%.1f %.1f\n", v, d);
		fflush(stdout);
	}
	if (lfd >= 0)
		close(lfd);
	return 0;
}
