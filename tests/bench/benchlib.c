// SPDX-License-Identifier: GPL-2.0
/* benchlib.c: the tight loops of `make bench`, called from tests/bench/bench.py with ctypes.
 *
 * bb_run() runs a program with BPF_PROG_TEST_RUN many times with repeat=1, one frame per call,
 * and keeps the duration the kernel reports for each call. repeat=N would not do: the kernel
 * does not restore the packet between iterations, so a program that rewrites the destination
 * would take its VIP path once and then see a packet for the backend, not the VIP. Each call's
 * verdict and output bytes are checked as it goes (see bb_check()).
 *
 * bb_fill_flows() pre-fills bgs_flows (and bgs_reverse) with synthetic live flows by batched
 * map updates; bb_count() counts a hash map's keys; bb_load() loads one program of an object
 * file with libbpf (the floor programs).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bgswitch.h"

struct bb_result {
	uint64_t calls;
	uint64_t sum_ns; /* sum of the per-call durations */
	uint32_t verdict; /* verdict of the first call */
	uint32_t verdict_mismatch; /* calls whose verdict was not the first call's */
	uint32_t exact; /* output equal to the expected frame */
	uint32_t masked; /* equal but for MACs, TTL/hop limit and a valid IPv4 header checksum */
	uint32_t bad; /* any other output */
	int32_t first_bad; /* index of the first bad call, or -1 */
	int32_t err; /* -errno of a failed bpf() call, or 0 */
	uint32_t out_len; /* output length of the first bad call (or of the last call) */
};

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)sum;
}

static int ipv4_csum_ok(const uint8_t *ip, uint32_t room)
{
	uint32_t ihl, i, sum = 0;

	if (room < 20)
		return 0;
	ihl = (ip[0] & 0x0f) * 4u;
	if (ihl < 20 || ihl > room)
		return 0;
	for (i = 0; i < ihl; i += 2)
		sum += (uint32_t)ip[i] << 8 | ip[i + 1];
	return csum_fold(sum) == 0xffff;
}

/* 0: bad, 1: exact, 2: equal outside the bytes a forwarding fast path may rewrite (Ethernet
 * addresses, IPv4 TTL and header checksum, IPv6 hop limit), with a valid IPv4 header checksum.
 */
static int bb_check(const uint8_t *out, uint32_t out_len, const uint8_t *want, uint32_t len,
		    uint32_t l3)
{
	uint32_t i;
	int v6;

	if (out_len != len)
		return 0;
	if (!memcmp(out, want, len))
		return 1;
	if (l3 >= len)
		return 0;
	v6 = (want[l3] >> 4) == 6;
	for (i = 12; i < len; i++) {
		if (out[i] == want[i])
			continue;
		if (i >= l3 && !v6 && (i == l3 + 8 || i == l3 + 10 || i == l3 + 11))
			continue;
		if (i >= l3 && v6 && i == l3 + 7)
			continue;
		return 0;
	}
	if (!v6 && !ipv4_csum_ok(out + l3, len - l3))
		return 0;
	return 2;
}

/* Run prog_fd `calls` times, call c on frame c % nframes (each `len` bytes, back to back in
 * `in`), checking the output against the same frame of `want`. durations[c] gets the kernel's
 * duration of call c. Returns 0, or -errno when a bpf() call failed.
 */
int bb_run(int prog_fd, const uint8_t *in, uint32_t len, uint32_t nframes, const uint8_t *want,
	   uint32_t l3, uint32_t calls, uint32_t *durations, struct bb_result *res)
{
	uint8_t out[2048];
	uint32_t c;

	memset(res, 0, sizeof(*res));
	res->first_bad = -1;
	if (!nframes || len > sizeof(out) - 256)
		return res->err = -EINVAL;
	for (c = 0; c < calls; c++) {
		const uint8_t *frame = in + (size_t)(c % nframes) * len;
		LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
			    .data_out = out, .data_size_out = sizeof(out), .repeat = 1);
		int ok;

		if (bpf_prog_test_run_opts(prog_fd, &opts))
			return res->err = -errno;
		durations[c] = opts.duration;
		res->sum_ns += opts.duration;
		res->calls++;
		if (c == 0)
			res->verdict = opts.retval;
		else if (opts.retval != res->verdict)
			res->verdict_mismatch++;
		ok = bb_check(out, opts.data_size_out, want + (size_t)(c % nframes) * len, len, l3);
		if (ok == 1) {
			res->exact++;
		} else if (ok == 2) {
			res->masked++;
		} else {
			res->bad++;
			if (res->first_bad < 0) {
				res->first_bad = (int32_t)c;
				res->out_len = opts.data_size_out;
			}
		}
		if (res->first_bad < 0)
			res->out_len = opts.data_size_out;
	}
	return 0;
}

/* The client of synthetic flow i: 198.18.0.0/15 (RFC 2544's benchmarking range), 32768 source
 * ports per address. tests/bench/bench.py mirrors it (flow_client()).
 */
static void bb_flow_client(uint32_t i, uint32_t *addr, uint16_t *port)
{
	*addr = htonl(0xc6120000u + (i >> 15));
	*port = htons((uint16_t)(32768u + (i & 0x7fffu)));
}

#ifndef ENOTSUPP
#define ENOTSUPP 524 /* the kernel's "operation not supported" */
#endif

static int bb_update(int fd, void *keys, void *vals, uint32_t n, uint32_t ksz, uint32_t vsz,
		     int *batch_ok)
{
	uint32_t i, count = n;

	if (*batch_ok) {
		if (!bpf_map_update_batch(fd, keys, vals, &count, NULL))
			return 0;
		if (errno != EINVAL && errno != ENOTSUPP && errno != EOPNOTSUPP)
			return -errno;
		*batch_ok = 0; /* not supported: one by one (count says how far it got) */
	} else {
		count = 0;
	}
	for (i = count; i < n; i++)
		if (bpf_map_update_elem(fd, (char *)keys + (size_t)i * ksz,
					(char *)vals + (size_t)i * vsz, BPF_ANY))
			return -errno;
	return 0;
}

/* Insert flows [start, start + count) of the synthetic clients to the key's VIP, with `val` as
 * their value, into bgs_flows, and their reverse entries (rkey's backend address and port,
 * `rev` as value) into bgs_reverse when rev_fd >= 0. Returns 0 (and *batched says whether the
 * kernel took batches), or -errno.
 */
int bb_fill_flows(int flows_fd, int rev_fd, uint32_t start, uint32_t count,
		  const struct bgs_flow_key *key, const struct bgs_flow *val,
		  const struct bgs_flow_key *rkey, const struct bgs_reverse *rev, int *batched)
{
	const uint32_t chunk = 8192;
	struct bgs_flow_key *keys = calloc(chunk, sizeof(*keys));
	struct bgs_flow_key *rkeys = calloc(chunk, sizeof(*rkeys));
	struct bgs_flow *vals = calloc(chunk, sizeof(*vals));
	struct bgs_reverse *revs = calloc(chunk, sizeof(*revs));
	int batch_ok = 1, batch_rev_ok = 1, err = 0;
	uint32_t done, n, j, addr;
	uint16_t port;

	if (!keys || !rkeys || !vals || !revs) {
		err = -ENOMEM;
		goto out;
	}
	for (done = 0; done < count && !err; done += n) {
		n = count - done < chunk ? count - done : chunk;
		for (j = 0; j < n; j++) {
			bb_flow_client(start + done + j, &addr, &port);
			keys[j] = *key;
			keys[j].saddr[0] = addr;
			keys[j].sport = port;
			vals[j] = *val;
			rkeys[j] = *rkey;
			rkeys[j].daddr[0] = addr;
			rkeys[j].dport = port;
			revs[j] = *rev;
		}
		if (rev_fd >= 0)
			err = bb_update(rev_fd, rkeys, revs, n, sizeof(*rkeys), sizeof(*revs),
					&batch_rev_ok);
		if (!err)
			err = bb_update(flows_fd, keys, vals, n, sizeof(*keys), sizeof(*vals),
					&batch_ok);
	}
	if (batched)
		*batched = batch_ok;
out:
	free(keys);
	free(rkeys);
	free(vals);
	free(revs);
	return err;
}

/* Number of keys in a hash map (BPF_MAP_GET_NEXT_KEY walk), or -errno. */
long bb_count(int fd, uint32_t key_size)
{
	char a[256], b[256];
	void *cur = NULL, *next = a;
	long n = 0;

	if (key_size > sizeof(a))
		return -EINVAL;
	while (!bpf_map_get_next_key(fd, cur, next)) {
		n++;
		cur = next;
		next = next == a ? b : a;
	}
	return errno == ENOENT ? n : -errno;
}

/* Load the object file and return an fd of its program `name` (the caller closes it), or
 * -errno. The object itself is closed: the returned fd keeps the program alive.
 */
int bb_load(const char *path, const char *name)
{
	struct bpf_object *obj;
	struct bpf_program *prog;
	int fd, err;

	obj = bpf_object__open_file(path, NULL);
	if (!obj)
		return -errno;
	err = bpf_object__load(obj);
	if (err) {
		bpf_object__close(obj);
		return err < 0 ? err : -EINVAL;
	}
	prog = bpf_object__find_program_by_name(obj, name);
	fd = prog ? dup(bpf_program__fd(prog)) : -ENOENT;
	if (prog && fd < 0)
		fd = -errno;
	bpf_object__close(obj);
	return fd;
}

/* Delete what bb_fill_flows() inserted for flows [start, start + count) (missing keys are
 * fine). Returns the number of bgs_flows entries deleted, or -errno.
 */
long bb_delete_flows(int flows_fd, int rev_fd, uint32_t start, uint32_t count,
		     const struct bgs_flow_key *key, const struct bgs_flow_key *rkey)
{
	struct bgs_flow_key k = *key, rk = *rkey;
	uint32_t i, addr;
	uint16_t port;
	long n = 0;

	for (i = 0; i < count; i++) {
		bb_flow_client(start + i, &addr, &port);
		k.saddr[0] = addr;
		k.sport = port;
		rk.daddr[0] = addr;
		rk.dport = port;
		if (!bpf_map_delete_elem(flows_fd, &k))
			n++;
		else if (errno != ENOENT)
			return -errno;
		if (rev_fd >= 0 && bpf_map_delete_elem(rev_fd, &rk) && errno != ENOENT)
			return -errno;
	}
	return n;
}
