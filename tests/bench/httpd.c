// SPDX-License-Identifier: GPL-2.0
/* bench-httpd: a tiny single-threaded epoll HTTP/1.1 server, the backend of `make bench`.
 *
 *   bench-httpd --addr A.B.C.D --port N --color blue|green
 *
 * Every request (whatever its method and path) gets "200 OK" and the body
 * "<color> <addr>:<port>\n", so a client can tell which backend served it; "GET /stats" gets
 * "served <count>\n" instead. Connections are kept alive unless the request says
 * "Connection: close" (or is HTTP/1.0), in which case the server closes after the reply.
 * Prints "ready" once listening; ends on SIGTERM or SIGINT. Only for benchmarks inside network
 * namespaces: no timeouts, no limits but a per-connection buffer (a longer request ends the
 * connection).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define BUF 4096

struct conn {
	int fd;
	int len; /* bytes of request data held */
	int close_after;
	int out_len, out_off; /* reply bytes not yet written */
	char in[BUF];
	char out[BUF];
};

static volatile sig_atomic_t stop;
static unsigned long long served;
static char body[128];
static int body_len;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int has_token(const char *hdrs, const char *end, const char *name, const char *value)
{
	size_t nl = strlen(name), vl = strlen(value);
	const char *p = hdrs;

	while (p < end) {
		const char *eol = memchr(p, '\n', end - p);

		if (!eol)
			eol = end;
		if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl)) {
			const char *v = p + nl;

			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			if ((size_t)(eol - v) >= vl && !strncasecmp(v, value, vl))
				return 1;
		}
		p = eol + 1;
	}
	return 0;
}

/* Append the reply to each complete request held; returns -1 to drop the connection. */
static int handle(struct conn *c)
{
	char *end;

	while ((end = memmem(c->in, c->len, "\r\n\r\n", 4))) {
		int reqlen = end + 4 - c->in, n;
		char stats[64];
		const char *b = body;
		int blen = body_len;

		if (!strncmp(c->in, "GET /stats ", 11)) {
			blen = snprintf(stats, sizeof(stats), "served %llu\n", served);
			b = stats;
		} else {
			served++;
		}
		if (has_token(c->in, end, "Connection:", "close") ||
		    memmem(c->in, end - c->in, "HTTP/1.0", 8))
			c->close_after = 1;
		n = snprintf(c->out + c->out_len, sizeof(c->out) - c->out_len,
			     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
			     "Content-Length: %d\r\n%s\r\n%.*s",
			     blen, c->close_after ? "Connection: close\r\n" : "", blen, b);
		if (n < 0 || n >= (int)sizeof(c->out) - c->out_len)
			return -1;
		c->out_len += n;
		memmove(c->in, c->in + reqlen, c->len - reqlen);
		c->len -= reqlen;
		if (c->close_after)
			break;
	}
	return c->len >= BUF ? -1 : 0;
}

/* Write what is pending; 1 when all is written, 0 when the socket is full, -1 on error. */
static int flush_out(struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);

		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		c->out_off += n;
	}
	c->out_len = c->out_off = 0;
	return 1;
}

static void drop(int ep, struct conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

int main(int argc, char **argv)
{
	const char *addr = NULL, *color = NULL;
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct epoll_event ev, evs[256];
	struct sigaction sa = { .sa_handler = on_signal };
	int port = 0, one = 1, lfd, ep, i, n;

	for (i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--addr"))
			addr = argv[i + 1];
		else if (!strcmp(argv[i], "--port"))
			port = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--color"))
			color = argv[i + 1];
	}
	if (!addr || !color || port <= 0 || port > 65535 || i != argc ||
	    inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
		fprintf(stderr, "usage: bench-httpd --addr A.B.C.D --port N --color NAME\n");
		return 2;
	}
	body_len = snprintf(body, sizeof(body), "%s %s:%d\n", color, addr, port);
	sin.sin_port = htons(port);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) || listen(lfd, 4096)) {
		perror("bench-httpd: listen");
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev)) {
		perror("bench-httpd: epoll");
		return 1;
	}
	printf("ready\n");
	fflush(stdout);

	while (!stop) {
		n = epoll_wait(ep, evs, 256, 500);
		for (i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			if (!c) {
				int cfd;

				while ((cfd = accept4(lfd, NULL, NULL,
						      SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					c = calloc(1, sizeof(*c));
					if (!c) {
						close(cfd);
						continue;
					}
					c->fd = cfd;
					setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one,
						   sizeof(one));
					ev.events = EPOLLIN;
					ev.data.ptr = c;
					if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev)) {
						close(cfd);
						free(c);
					}
				}
				continue;
			}
			if (evs[i].events & EPOLLIN) {
				ssize_t r = read(c->fd, c->in + c->len, BUF - c->len);

				if (r <= 0) {
					if (r < 0 && errno == EAGAIN)
						continue;
					drop(ep, c);
					continue;
				}
				c->len += r;
				if (handle(c) < 0) {
					drop(ep, c);
					continue;
				}
			}
			if (c->out_len) {
				int w = flush_out(c);

				if (w < 0 || (w == 1 && c->close_after)) {
					drop(ep, c);
					continue;
				}
				ev.events = w ? EPOLLIN : EPOLLIN | EPOLLOUT;
				ev.data.ptr = c;
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
			} else if (evs[i].events & (EPOLLHUP | EPOLLERR)) {
				drop(ep, c);
			}
		}
	}
	close(lfd);
	close(ep);
	return 0;
}
