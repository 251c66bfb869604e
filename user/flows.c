// SPDX-License-Identifier: GPL-2.0
/* flows.c: the flow table seen from user space: which entries are live, walks of it, the census
 * of live flows per backend slot, and deleting entries (a slot's, or the expired ones).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "log.h"
#include "state.h"
#include "util.h"

/* How long ago a flow's client was last seen, in ns, at now (CLOCK_MONOTONIC ns). */
static __u64 flow_age(const struct bgs_flow *f, __u64 now)
{
	__s32 d = (__u32)(now >> BGS_SEEN_SHIFT) - f->seen;

	return d > 0 ? (__u64)d << BGS_SEEN_SHIFT : 0;
}

static bool flow_closed(const struct bgs_conn_key *k, const struct bgs_flow *f)
{
	return k->proto == IPPROTO_TCP &&
	       ((f->state & BGS_FLOW_RST) || (f->state & BGS_FLOW_BOTH_FIN) == BGS_FLOW_BOTH_FIN);
}

bool flow_live(const struct bgs_state *st, const struct bgs_conn_key *k, const struct bgs_flow *f,
	       __u64 now)
{
	__u64 idle = k->proto == IPPROTO_TCP ? st->cfg.tcp_idle_ns : st->cfg.udp_idle_ns;

	return !flow_closed(k, f) && flow_age(f, now) <= idle;
}

#define SCAN_BATCH 4096

/* Call cb on every flow entry; a non-zero return from cb stops the walk and is returned. */
int flows_scan(const struct bgs_state *st,
	       int (*cb)(const struct bgs_conn_key *k, const struct bgs_flow *f, void *ctx),
	       void *ctx)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	struct bgs_conn_key *keys = NULL;
	struct bgs_flow *vals = NULL;
	__u32 in = 0, out = 0, count, i;
	bool first = true, last = false;
	int err = 0, ret;

	keys = calloc(SCAN_BATCH, sizeof(*keys));
	vals = calloc(SCAN_BATCH, sizeof(*vals));
	if (!keys || !vals) {
		err = -ENOMEM;
		goto out;
	}
	while (!last) {
		count = SCAN_BATCH;
		ret = bpf_map_lookup_batch(st->fd[BGS_M_FLOWS], first ? NULL : &in, &out, keys,
					   vals, &count, &opts);
		if (ret < 0) {
			if (ret != -ENOENT) {
				err = ret;
				pr_warn("cannot read the flow table: %s\n", strerror(-ret));
				goto out;
			}
			last = true;
		}
		for (i = 0; i < count; i++) {
			err = cb(&keys[i], &vals[i], ctx);
			if (err)
				goto out;
		}
		in = out;
		first = false;
	}
out:
	free(keys);
	free(vals);
	return err;
}

struct census_ctx {
	const struct bgs_state *st;
	struct bgs_flow_census *c;
	__u64 now;
};

static int census_cb(const struct bgs_conn_key *k, const struct bgs_flow *f, void *ctx)
{
	struct census_ctx *cc = ctx;

	cc->c->entries++;
	if (f->slot < BGS_MAX_SLOTS && flow_live(cc->st, k, f, cc->now)) {
		cc->c->live[f->slot]++;
		cc->c->live_total++;
	}
	return 0;
}

/* Add the local clients' open sockets of each slot (counted by the cgroup hooks). */
static int census_local(const struct bgs_state *st, struct bgs_flow_census *c)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	__u32 in = 0, out = 0, n, i, keys[512];
	bool first = true, last = false;
	struct bgs_local_count vals[512];
	int err;

	while (!last) {
		n = 512;
		err = bpf_map_lookup_batch(st->fd[BGS_M_LOCAL_COUNTS], first ? NULL : &in, &out,
					   keys, vals, &n, &opts);
		if (err && err != -ENOENT) {
			pr_warn("cannot read bgs_local_counts: %s\n", strerror(-err));
			return err;
		}
		last = err == -ENOENT || !n;
		for (i = 0; i < n; i++) {
			/* below zero (a release racing a count cleared by a cut): none */
			__s64 live = (__s64)vals[i].live;
			__u32 v = live <= 0 ? 0 : live > UINT32_MAX ? UINT32_MAX : (__u32)live;

			if (keys[i] >= BGS_MAX_SLOTS)
				continue;
			c->local_opened[keys[i]] = vals[i].opened;
			c->local[keys[i]] = v;
			c->live[keys[i]] += v;
			c->local_total += v;
			c->live_total += v;
		}
		in = out;
		first = false;
	}
	return 0;
}

int flows_census(const struct bgs_state *st, struct bgs_flow_census *c)
{
	struct census_ctx cc = { .st = st, .c = c, .now = now_ns() };
	int err;

	memset(c, 0, sizeof(*c));
	err = flows_scan(st, census_cb, &cc);
	return err ? err : census_local(st, c);
}

/* Flow keys gathered in a walk, to delete after it (deleting during a walk disturbs it). */
struct doomed {
	const struct bgs_state *st;
	bool (*pick)(const struct doomed *d, const struct bgs_conn_key *k,
		     const struct bgs_flow *f);
	__u32 slot;
	bool live_too;
	__u64 now;
	struct bgs_conn_key *keys;
	size_t n, cap;
};

static int doomed_cb(const struct bgs_conn_key *k, const struct bgs_flow *f, void *ctx)
{
	struct doomed *d = ctx;

	if (!d->pick(d, k, f))
		return 0;
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 256;
		struct bgs_conn_key *nk = realloc(d->keys, cap * sizeof(*nk));

		if (!nk)
			return -ENOMEM;
		d->keys = nk;
		d->cap = cap;
	}
	d->keys[d->n++] = *k;
	return 0;
}

/* Walk the flow table, then delete the entries d->pick chose. */
static int flows_delete(struct bgs_state *st, struct doomed *d, __u64 *deleted)
{
	size_t i;
	int err;

	*deleted = 0;
	d->st = st;
	d->now = now_ns();
	err = flows_scan(st, doomed_cb, d);
	for (i = 0; !err && i < d->n; i++) {
		if (!bpf_map_delete_elem(st->fd[BGS_M_FLOWS], &d->keys[i]))
			(*deleted)++;
	}
	if (*deleted) {
		/* Counted, so that inserts - entries - collected tells how many the LRU evicted. */
		__u32 zero = 0;

		st->cfg.collected += *deleted;
		bpf_map_update_elem(st->fd[BGS_M_CONFIG], &zero, &st->cfg, BPF_EXIST);
	}
	free(d->keys);
	return err;
}

static bool pick_slot(const struct doomed *d, const struct bgs_conn_key *k,
		      const struct bgs_flow *f)
{
	return f->slot == d->slot && (d->live_too || !flow_live(d->st, k, f, d->now));
}

/* Delete the flow entries that point at a slot: the dead ones, or all of them with live_too. */
int flows_delete_slot(struct bgs_state *st, __u32 slot, bool live_too, __u64 *deleted)
{
	struct doomed d = { .pick = pick_slot, .slot = slot, .live_too = live_too };

	return flows_delete(st, &d, deleted);
}

/* An entry past its time: closed for longer than the closing timeout, or idle past its
 * protocol's idle timeout. A UDP entry is kept while its service drains: its next datagram is
 * re-pinned by the second chance from it (UDP has no SYN to tell a new flow from an old one).
 */
static bool pick_expired(const struct doomed *d, const struct bgs_conn_key *k,
			 const struct bgs_flow *f)
{
	const struct bgs_config *cfg = &d->st->cfg;
	__u64 age = flow_age(f, d->now);

	/* Closed by the client's RST alone, an entry waits for the idle timeout (see flow.bpf.h). */
	if (flow_closed(k, f) && ((f->state & BGS_FLOW_RST_SERVER) ||
				  (f->state & BGS_FLOW_BOTH_FIN) == BGS_FLOW_BOTH_FIN))
		return age > cfg->closing_ns;
	if (k->proto == IPPROTO_UDP && k->svc < BGS_MAX_SERVICES &&
	    (switch_read(d->st, k->svc).flags & BGS_SW_DRAINING))
		return false;
	return age > (k->proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns);
}

/* Collect expired flow entries, so that the table holds what is alive or closing. */
int flows_collect(struct bgs_state *st, __u64 *deleted)
{
	struct doomed d = { .pick = pick_expired };

	return flows_delete(st, &d, deleted);
}
