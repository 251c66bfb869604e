// SPDX-License-Identifier: GPL-2.0
/* benchlib.c: the tight loops of `make bench`, called from tests/bench/bench.py with ctypes.
 *
 * bb_run() runs a program with BPF_PROG_TEST_RUN many times with repeat=1, one frame per call,
 * and keeps the duration the kernel reports for each call. repeat=N would not do: the kernel
 * does not restore the packet between iterations, so a program that rewrites the destination
 * would take its VIP path once and then see a packet for the backend, not the VIP. Each call's
 * verdict and output bytes are checked as it goes (see bb_check()). An XDP program may be given
 * the interface the packet arrives on (an xdp_md context), as on a node.
 *
 * bb_prime() pushes synthetic new flows through a program (to fill its tables the way traffic
 * does, whatever their layout); bb_fill_keys() and bb_fill_u32() fill a map of known layout by
 * batched updates; bb_fill_flows() pre-fills bgs_flows with synthetic live flows; bb_count() counts a hash map's keys; bb_load() loads one program of an object file with
 * libbpf (the floor programs); bb_obj_*() load a whole object and hand out its programs' and
 * maps' fds (another balancer's object, measured side by side); bb_map_create() makes a map.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
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

/* ifindex flag of bb_run(): the program is a TC one, and ifindex its skb->ingress_ifindex. */
#define BB_TC_CTX (1u << 31)

/* One BPF_PROG_TEST_RUN of a frame; an XDP program gets an xdp_md that says it arrived on
 * interface `ifindex` (of the caller's network namespace) when ifindex is not 0; a TC program
 * (ifindex with BB_TC_CTX) an __sk_buff that says it came in by that interface.
 */
static int bb_run_one(int prog_fd, const uint8_t *frame, uint32_t len, uint32_t ifindex,
		      uint8_t *out, uint32_t out_size, struct bpf_test_run_opts *opts)
{
	struct xdp_md ctx = { .data_end = len, .ingress_ifindex = ifindex };
	struct __sk_buff skb = { .ingress_ifindex = ifindex & ~BB_TC_CTX };

	memset(opts, 0, sizeof(*opts));
	opts->sz = sizeof(*opts);
	opts->data_in = frame;
	opts->data_size_in = len;
	opts->data_out = out;
	opts->data_size_out = out_size;
	opts->repeat = 1;
	if (ifindex & BB_TC_CTX) {
		opts->ctx_in = &skb;
		opts->ctx_size_in = sizeof(skb);
	} else if (ifindex) {
		opts->ctx_in = &ctx;
		opts->ctx_size_in = sizeof(ctx);
	}
	return bpf_prog_test_run_opts(prog_fd, opts) ? -errno : 0;
}

/* Run prog_fd `calls` times, call c on frame c % nframes (each `len` bytes, back to back in
 * `in`), checking the output against the same frame of `want` (each `want_len` bytes: an
 * encapsulating program makes longer frames). ifindex: see bb_run_one(). durations[c] gets
 * the kernel's duration of call c. Returns 0, or -errno when a bpf() call failed.
 */
int bb_run(int prog_fd, const uint8_t *in, uint32_t len, uint32_t nframes, const uint8_t *want,
	   uint32_t want_len, uint32_t l3, uint32_t ifindex, uint32_t calls, uint32_t *durations,
	   struct bb_result *res)
{
	struct bpf_test_run_opts opts;
	uint8_t out[2048];
	uint32_t c;

	memset(res, 0, sizeof(*res));
	res->first_bad = -1;
	if (!nframes || len > sizeof(out) - 256 || want_len > sizeof(out))
		return res->err = -EINVAL;
	for (c = 0; c < calls; c++) {
		const uint8_t *frame = in + (size_t)(c % nframes) * len;
		int ok;

		res->err = bb_run_one(prog_fd, frame, len, ifindex, out, sizeof(out), &opts);
		if (res->err)
			return res->err;
		durations[c] = opts.duration;
		res->sum_ns += opts.duration;
		res->calls++;
		if (c == 0)
			res->verdict = opts.retval;
		else if (opts.retval != res->verdict)
			res->verdict_mismatch++;
		ok = bb_check(out, opts.data_size_out, want + (size_t)(c % nframes) * want_len,
			      want_len, l3);
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

/* Insert flows [start, start + count) of the synthetic clients of the key's service, with `val`
 * as their value, into bgs_flows. Returns 0 (and *batched says whether the kernel took
 * batches), or -errno.
 */
int bb_fill_flows(int flows_fd, uint32_t start, uint32_t count, const struct bgs_conn_key *key,
		  const struct bgs_flow *val, int *batched)
{
	const uint32_t chunk = 8192;
	struct bgs_conn_key *keys = calloc(chunk, sizeof(*keys));
	struct bgs_flow *vals = calloc(chunk, sizeof(*vals));
	int batch_ok = 1, err = 0;
	uint32_t done, n, j, addr;
	uint16_t port;

	if (!keys || !vals) {
		err = -ENOMEM;
		goto out;
	}
	for (done = 0; done < count && !err; done += n) {
		n = count - done < chunk ? count - done : chunk;
		for (j = 0; j < n; j++) {
			bb_flow_client(start + done + j, &addr, &port);
			keys[j] = *key;
			keys[j].caddr[0] = addr;
			keys[j].cport = port;
			vals[j] = *val;
		}
		err = bb_update(flows_fd, keys, vals, n, sizeof(*keys), sizeof(*vals), &batch_ok);
	}
	if (batched)
		*batched = batch_ok;
out:
	free(keys);
	free(vals);
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
long bb_delete_flows(int flows_fd, uint32_t start, uint32_t count, const struct bgs_conn_key *key)
{
	struct bgs_conn_key k = *key;
	uint32_t i, addr;
	uint16_t port;
	long n = 0;

	for (i = 0; i < count; i++) {
		bb_flow_client(start + i, &addr, &port);
		k.caddr[0] = addr;
		k.cport = port;
		if (!bpf_map_delete_elem(flows_fd, &k))
			n++;
		else if (errno != ENOENT)
			return -errno;
	}
	return n;
}

/* The ones' complement sum of n bytes (big-endian 16-bit words), not folded. */
static uint32_t bb_sum16(const uint8_t *p, uint32_t n, uint32_t sum)
{
	uint32_t i;

	for (i = 0; i + 1 < n; i += 2)
		sum += (uint32_t)p[i] << 8 | p[i + 1];
	if (n & 1)
		sum += (uint32_t)p[n - 1] << 8;
	return sum;
}

/* Make frame f (a copy of a TCP template) the frame of synthetic client i: its source address
 * (IPv4, or the last 32 bits of an IPv6 one) and port from bb_flow_client(), and every checksum
 * computed again from scratch. Returns 0, or -EINVAL for a frame that is not IP / TCP.
 */
static int bb_make_client(uint8_t *f, uint32_t len, uint32_t l3, uint32_t i)
{
	uint32_t addr, l4, sum, tcp_len;
	uint16_t port, c;
	int v6 = (f[l3] >> 4) == 6;

	l4 = v6 ? l3 + 40 : l3 + (f[l3] & 0x0f) * 4u;
	if (l4 + 20 > len || f[v6 ? l3 + 6 : l3 + 9] != 6)
		return -EINVAL;
	bb_flow_client(i, &addr, &port);
	memcpy(f + (v6 ? l3 + 20 : l3 + 12), &addr, 4);
	memcpy(f + l4, &port, 2);
	tcp_len = len - l4;
	if (!v6) {
		f[l3 + 10] = f[l3 + 11] = 0;
		c = (uint16_t)~csum_fold(bb_sum16(f + l3, l4 - l3, 0));
		f[l3 + 10] = c >> 8;
		f[l3 + 11] = c & 0xff;
	}
	f[l4 + 16] = f[l4 + 17] = 0;
	sum = v6 ? bb_sum16(f + l3 + 8, 32, 0) : bb_sum16(f + l3 + 12, 8, 0);
	sum += 6 + tcp_len;
	c = (uint16_t)~csum_fold(bb_sum16(f + l4, tcp_len, sum));
	f[l4 + 16] = c >> 8;
	f[l4 + 17] = c & 0xff;
	return 0;
}

/* Push the first packets of synthetic flows [start, start + count) through a program, made
 * from the TCP frame `tmpl` (a SYN to a VIP) by bb_make_client(): the program fills its flow
 * tables the way traffic would, whatever their layout. *bad counts the calls whose verdict is
 * not in ok_mask (bit v: verdict v is fine). Returns 0 or -errno.
 */
int bb_prime(int prog_fd, const uint8_t *tmpl, uint32_t len, uint32_t l3, uint32_t ifindex,
	     uint32_t start, uint32_t count, uint32_t ok_mask, uint64_t *bad)
{
	struct bpf_test_run_opts opts;
	uint8_t frame[512], out[1024];
	uint32_t i;
	int err;

	*bad = 0;
	if (len > sizeof(frame) || l3 >= len)
		return -EINVAL;
	memcpy(frame, tmpl, len);
	for (i = 0; i < count; i++) {
		err = bb_make_client(frame, len, l3, start + i);
		if (!err)
			err = bb_run_one(prog_fd, frame, len, ifindex, out, sizeof(out), &opts);
		if (err)
			return err;
		if (opts.retval >= 32 || !(ok_mask & (1u << opts.retval)))
			(*bad)++;
	}
	return 0;
}

/* Insert `count` entries into a hash map by batched updates (one by one where batches are not
 * supported): the keys are copies of `key` (ksz bytes) with synthetic client start + i's
 * address at addr_off and port at port_off (bb_flow_client()), all with the value `val`.
 * Returns 0 or -errno.
 */
int bb_fill_keys(int fd, const uint8_t *key, uint32_t ksz, const uint8_t *val, uint32_t vsz,
		 uint32_t addr_off, uint32_t port_off, uint32_t start, uint32_t count)
{
	const uint32_t chunk = 8192;
	uint8_t *keys = calloc(chunk, ksz), *vals = calloc(chunk, vsz);
	uint32_t done, n, j, addr;
	int batch_ok = 1, err = 0;
	uint16_t port;

	if (!keys || !vals || addr_off + 4 > ksz || port_off + 2 > ksz) {
		err = !keys || !vals ? -ENOMEM : -EINVAL;
		goto out;
	}
	for (done = 0; done < count && !err; done += n) {
		n = count - done < chunk ? count - done : chunk;
		for (j = 0; j < n; j++) {
			uint8_t *k = keys + (size_t)j * ksz;

			bb_flow_client(start + done + j, &addr, &port);
			memcpy(k, key, ksz);
			memcpy(k + addr_off, &addr, 4);
			memcpy(k + port_off, &port, 2);
			memcpy(vals + (size_t)j * vsz, val, vsz);
		}
		err = bb_update(fd, keys, vals, n, ksz, vsz, &batch_ok);
	}
out:
	free(keys);
	free(vals);
	return err;
}

/* Set entries [start, start + count) of an array of u32 to `value`. Returns 0 or -errno. */
int bb_fill_u32(int fd, uint32_t start, uint32_t count, uint32_t value)
{
	const uint32_t chunk = 8192;
	uint32_t *keys = calloc(chunk, 4), *vals = calloc(chunk, 4);
	uint32_t done, n, j;
	int batch_ok = 1, err = 0;

	if (!keys || !vals) {
		err = -ENOMEM;
		goto out;
	}
	for (done = 0; done < count && !err; done += n) {
		n = count - done < chunk ? count - done : chunk;
		for (j = 0; j < n; j++) {
			keys[j] = start + done + j;
			vals[j] = value;
		}
		err = bb_update(fd, keys, vals, n, 4, 4, &batch_ok);
	}
out:
	free(keys);
	free(vals);
	return err;
}

/* libbpf's warnings only: its notes on sections another toolchain emits are not ours to fix. */
static int bb_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	return level == LIBBPF_WARN ? vfprintf(stderr, fmt, args) : 0;
}

/* Open an object file (not loaded yet: see bb_obj_load()). Returns the object (bb_obj_close()
 * it), or NULL with *err set to -errno.
 */
struct bpf_object *bb_obj_open(const char *path, int *err)
{
	struct bpf_object *obj;

	libbpf_set_print(bb_libbpf_print);
	obj = bpf_object__open_file(path, NULL);

	*err = obj ? 0 : -errno;
	return obj;
}

/* Load an opened object: its maps are created as its definitions say. Returns 0 or -errno. */
int bb_obj_load(struct bpf_object *obj)
{
	int err = bpf_object__load(obj);

	return err < 0 ? err : err ? -EINVAL : 0;
}

/* The fd of an object's program (the object owns it), or -ENOENT. */
int bb_obj_prog_fd(struct bpf_object *obj, const char *name)
{
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, name);

	return prog ? bpf_program__fd(prog) : -ENOENT;
}

/* The fd of an object's map (the object owns it), or -ENOENT. */
int bb_obj_map_fd(struct bpf_object *obj, const char *name)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, name);

	return map ? bpf_map__fd(map) : -ENOENT;
}

/* Key and value sizes of the inner map definition of an object's map-in-map, or -ENOENT
 * (before bb_obj_load(): libbpf drops the definition once the map exists).
 */
int bb_obj_inner_sizes(struct bpf_object *obj, const char *name, uint32_t *ksz, uint32_t *vsz)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, name);
	struct bpf_map *inner = map ? bpf_map__inner_map(map) : NULL;

	if (!inner)
		return -ENOENT;
	*ksz = bpf_map__key_size(inner);
	*vsz = bpf_map__value_size(inner);
	return 0;
}

void bb_obj_close(struct bpf_object *obj)
{
	bpf_object__close(obj);
}

/* Create a map (the caller closes the fd). Returns the fd or -errno. */
int bb_map_create(uint32_t type, const char *name, uint32_t ksz, uint32_t vsz, uint32_t max_entries,
		  uint32_t flags)
{
	LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = flags);
	int fd = bpf_map_create(type, name, ksz, vsz, max_entries, &opts);

	return fd < 0 ? -errno : fd;
}

/* The kernel's verified_insns of a program (instructions its verifier processed), or -errno. */
long bb_prog_verified_insns(int prog_fd)
{
	struct bpf_prog_info info = {};
	__u32 len = sizeof(info);

	if (bpf_obj_get_info_by_fd(prog_fd, &info, &len))
		return -errno;
	return info.verified_insns;
}
