// SPDX-License-Identifier: GPL-2.0
/* probe.c: health probes of backends from the node: TCP connect, or an HTTP GET.
 *
 * Every backend is probed at once: non-blocking connects, then one poll() loop until each has
 * an answer or the timeout has passed. A TCP probe passes once the connection is established;
 * an HTTP probe then sends "GET PATH HTTP/1.0" and passes on a 2xx or 3xx status line.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "log.h"
#include "probe.h"

enum probe_phase {
	PROBE_CONNECT,
	PROBE_SEND,
	PROBE_READ,
	PROBE_DONE,
};

/* An HTTP path: starts with '/', printable, no blanks. */
int check_http_path(const char *path)
{
	size_t i, len = strlen(path);

	if (path[0] != '/' || len > BGS_CHECK_PATH_MAX)
		goto bad;
	for (i = 0; i < len; i++)
		if ((unsigned char)path[i] <= ' ' || (unsigned char)path[i] >= 0x7f)
			goto bad;
	return 0;
bad:
	pr_warn("--check-http '%s' is not a path (/..., at most %d printable characters, no "
		"blanks)\n",
		path, BGS_CHECK_PATH_MAX);
	return -EINVAL;
}

static void probe_end(struct bgs_probe *p, bool ok, const char *fmt, const char *arg)
{
	p->ok = ok;
	if (!ok)
		snprintf(p->error, sizeof(p->error), fmt, arg);
	p->phase = PROBE_DONE;
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
}

static void probe_start(struct bgs_probe *p)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t slen;

	p->fd = -1;
	p->phase = PROBE_CONNECT;
	p->sent = p->got = 0;
	p->ok = false;
	p->error[0] = '\0';
	if (p->ep.family == BGS_AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		memcpy(&s6->sin6_addr, p->ep.addr, 16);
		s6->sin6_port = p->ep.port;
		slen = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_addr.s_addr = p->ep.addr[0];
		s4->sin_port = p->ep.port;
		slen = sizeof(*s4);
	}
	p->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (p->fd < 0) {
		probe_end(p, false, "socket: %s", strerror(errno));
		return;
	}
	if (connect(p->fd, (struct sockaddr *)&ss, slen) && errno != EINPROGRESS)
		probe_end(p, false, "%s", strerror(errno));
}

static void probe_request(struct bgs_probe *p, const char *path, char *req, size_t len)
{
	char host[BGS_ADDRSTR_LEN];

	fmt_endpoint(p->ep.addr, p->ep.port, p->ep.family, host, sizeof(host));
	snprintf(req, len,
		 "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: bgswitch-check\r\n"
		 "Connection: close\r\n\r\n",
		 path, host);
}

/* The status line has arrived (or the connection ended): judge it. */
static void probe_judge(struct bgs_probe *p, bool eof)
{
	char *nl = memchr(p->buf, '\n', p->got);
	unsigned int status;
	char code[8];

	if (!nl && !eof && p->got < sizeof(p->buf) - 1)
		return; /* more to come */
	p->buf[p->got < sizeof(p->buf) ? p->got : sizeof(p->buf) - 1] = '\0';
	if (sscanf(p->buf, "HTTP/1.%*1[01] %3u", &status) != 1 || status < 100 || status > 599) {
		probe_end(p, false, "%s",
			  p->got ? "no HTTP status line" : "closed without a reply");
		return;
	}
	snprintf(code, sizeof(code), "%u", status);
	if (status >= 200 && status < 400)
		probe_end(p, true, "%s", "");
	else
		probe_end(p, false, "HTTP %s", code);
}

/* A connect has finished: a TCP probe is over, an HTTP probe goes on to send. */
static void probe_connected(struct bgs_probe *q, const char *http_path)
{
	socklen_t sl = sizeof(int);
	int soerr = 0;

	if (getsockopt(q->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl))
		soerr = errno;
	if (soerr)
		probe_end(q, false, "%s", strerror(soerr));
	else if (!http_path)
		probe_end(q, true, "%s", "");
	else
		q->phase = PROBE_SEND;
}

/* Send what is left of the request; read the reply once it is all sent. */
static void probe_send(struct bgs_probe *q, const char *http_path)
{
	char req[BGS_CHECK_PATH_MAX + 160];
	ssize_t r;

	probe_request(q, http_path, req, sizeof(req));
	r = send(q->fd, req + q->sent, strlen(req) - q->sent, MSG_NOSIGNAL);
	if (r < 0 && errno != EAGAIN) {
		probe_end(q, false, "%s", strerror(errno));
		return;
	}
	q->sent += r > 0 ? r : 0;
	if (q->sent == strlen(req))
		q->phase = PROBE_READ;
}

static void probe_read(struct bgs_probe *q)
{
	ssize_t r = recv(q->fd, q->buf + q->got, sizeof(q->buf) - 1 - q->got, 0);

	if (r < 0) {
		if (errno != EAGAIN)
			probe_end(q, false, "%s", strerror(errno));
		return;
	}
	q->got += r;
	probe_judge(q, r == 0);
}

/* One probe whose socket poll() reported ready: the next step of its phase. */
static void probe_step(struct bgs_probe *q, const char *http_path)
{
	if (q->phase == PROBE_CONNECT) {
		probe_connected(q, http_path);
		if (q->phase != PROBE_SEND)
			return;
	}
	if (q->phase == PROBE_SEND)
		probe_send(q, http_path);
	else
		probe_read(q);
}

/* What each probe waits for; returns how many are not done. */
static size_t probe_poll_set(const struct bgs_probe *p, struct pollfd *pfd, size_t n)
{
	size_t i, left = 0;

	for (i = 0; i < n; i++) {
		pfd[i].fd = p[i].phase == PROBE_DONE ? -1 : p[i].fd;
		pfd[i].events = p[i].phase == PROBE_READ ? POLLIN : POLLOUT;
		pfd[i].revents = 0;
		left += p[i].phase != PROBE_DONE;
	}
	return left;
}

/* Probe n backends concurrently; each gets ok, or error. Returns 0 or -errno (only for a
 * failure of the probing itself: a backend that fails its probe is a result).
 */
int probe_run(struct bgs_probe *p, size_t n, const char *http_path, __u64 timeout_ns)
{
	struct pollfd *pfd = calloc(n ? n : 1, sizeof(*pfd));
	__u64 start = now_ns(), deadline = start + timeout_ns, now;
	size_t i;
	int err = 0;

	if (!pfd)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		probe_start(&p[i]);
	for (;;) {
		now = now_ns();
		if (!probe_poll_set(p, pfd, n) || now >= deadline)
			break;
		if (poll(pfd, n, (deadline - now + 999999) / 1000000) < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			goto out;
		}
		for (i = 0; i < n; i++) {
			if (p[i].phase == PROBE_DONE || !pfd[i].revents)
				continue;
			p[i].elapsed_ns = now_ns() - start;
			probe_step(&p[i], http_path);
		}
	}
	for (i = 0; i < n; i++) {
		if (p[i].phase == PROBE_DONE)
			continue;
		p[i].elapsed_ns = now_ns() - start;
		probe_end(&p[i], false, "%s",
			  p[i].phase == PROBE_CONNECT ? "connect timed out" : "no reply in time");
	}
out:
	for (i = 0; i < n; i++)
		if (p[i].fd >= 0)
			close(p[i].fd);
	free(pfd);
	return err;
}
