// SPDX-License-Identifier: GPL-2.0
/* state.c: the pinned state under the pin root: opening, locking, and typed access to its maps. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "log.h"
#include "maglev.h"
#include "state.h"
#include "util.h"

const char *const bgs_map_names[BGS_M_COUNT] = {
	[BGS_M_CONFIG] = "bgs_config",
	[BGS_M_VIPS] = "bgs_vips",
	[BGS_M_SERVICES] = "bgs_services",
	[BGS_M_SWITCH] = "bgs_switch",
	[BGS_M_SETS] = "bgs_sets",
	[BGS_M_BACKENDS] = "bgs_backends",
	[BGS_M_BACKEND_ADDRS] = "bgs_backend_addrs",
	[BGS_M_FLOWS] = "bgs_flows",
	[BGS_M_NEXTHOPS] = "bgs_nexthops",
	[BGS_M_VIP_FILTER] = "bgs_vip_filter",
	[BGS_M_IFACES] = "bgs_ifaces",
	[BGS_M_STATS] = "bgs_stats",
	[BGS_M_DROPS] = "bgs_drops",
	[BGS_M_BACKEND_STATS] = "bgs_backend_stats",
	[BGS_M_SERVICE_STATS] = "bgs_service_stats",
	[BGS_M_VIP_ADDRS] = "bgs_vip_addrs",
	[BGS_M_FRAGS] = "bgs_frags",
	[BGS_M_TX_PORTS] = "bgs_tx_ports",
	[BGS_M_INSERT_BUDGET] = "bgs_insert_budget",
	[BGS_M_TABLES] = "bgs_tables",
	[BGS_M_LOCAL_NETNS] = "bgs_local_netns",
	[BGS_M_LOCAL_COUNTS] = "bgs_local_counts",
	[BGS_M_SOCKS] = "bgs_socks",
};

const char *bgs_pin_root = BGS_DEFAULT_PIN_ROOT;

#define SWITCH_MMAP_LEN (BGS_MAX_SERVICES * sizeof(__u64))

int state_need_root(void)
{
	if (geteuid() != 0) {
		pr_warn("must be run as root (it changes BPF state)\n");
		return -EPERM;
	}
	return 0;
}

int state_pin_path(char *buf, size_t len, const char *name)
{
	int n = snprintf(buf, len, "%s/%s", bgs_pin_root, name);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static bool is_bpffs(const char *path)
{
	struct statfs sfs;

	return !statfs(path, &sfs) && sfs.f_type == BPF_FS_MAGIC;
}

/* The pin root's parent must be a BPF filesystem; /sys/fs/bpf is mounted when it is missing. */
int state_prepare_fs(bool *created)
{
	char parent[PATH_MAX], *slash;
	char progs[PATH_MAX];

	if (snprintf(parent, sizeof(parent), "%s", bgs_pin_root) >= (int)sizeof(parent))
		return -ENAMETOOLONG;
	slash = strrchr(parent, '/');
	if (!slash || slash == parent) {
		pr_warn("pin root '%s' must be a directory below a BPF filesystem\n", bgs_pin_root);
		return -EINVAL;
	}
	*slash = '\0';
	if (!is_bpffs(parent)) {
		if (strcmp(parent, "/sys/fs/bpf")) {
			pr_warn("%s is not a BPF filesystem (mount -t bpf bpf %s)\n", parent,
				parent);
			return -ENOENT;
		}
		if (mount("bpf", parent, "bpf", 0, "mode=0700")) {
			pr_warn("cannot mount the BPF filesystem at %s: %s\n", parent,
				strerror(errno));
			return -errno;
		}
		pr_debug("mounted the BPF filesystem at %s\n", parent);
	}
	*created = false;
	if (mkdir(bgs_pin_root, 0700)) {
		if (errno != EEXIST) {
			pr_warn("cannot create %s: %s\n", bgs_pin_root, strerror(errno));
			return -errno;
		}
	} else {
		*created = true;
	}
	if (state_pin_path(progs, sizeof(progs), BGS_PROG_DIR))
		return -ENAMETOOLONG;
	if (mkdir(progs, 0700) && errno != EEXIST) {
		int err = -errno;

		pr_warn("cannot create %s: %s\n", progs, strerror(errno));
		if (*created)
			rmdir(bgs_pin_root);
		return err;
	}
	return 0;
}

/* Serialise changes between processes: an exclusive flock on the pin root directory. */
int state_lock(int *lock_fd)
{
	int fd = open(bgs_pin_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		pr_warn("cannot open %s: %s\n", bgs_pin_root, strerror(errno));
		return -errno;
	}
	if (flock(fd, LOCK_EX)) {
		int err = -errno;

		pr_warn("cannot lock %s: %s\n", bgs_pin_root, strerror(errno));
		close(fd);
		return err;
	}
	*lock_fd = fd;
	return 0;
}

int state_check_layout(const struct bgs_config *cfg)
{
	if (cfg->layout_version != BGS_LAYOUT_VERSION) {
		pr_warn("state at %s has map layout %u, this build uses %u; "
			"'detach --purge' it with the build that made it, then attach this one\n",
			bgs_pin_root, cfg->layout_version, BGS_LAYOUT_VERSION);
		return -EPROTO;
	}
	return 0;
}

int state_open(struct bgs_state *st, bool lock)
{
	char path[PATH_MAX];
	__u32 zero = 0;
	int i, err;

	memset(st, 0, sizeof(*st));
	for (i = 0; i < BGS_M_COUNT; i++)
		st->fd[i] = -1;
	st->lock_fd = -1;
	st->sw = MAP_FAILED;

	err = state_need_root();
	if (err)
		return err;
	if (!is_bpffs("/sys/fs/bpf") && !strncmp(bgs_pin_root, "/sys/fs/bpf/", 12)) {
		pr_warn("no BPF filesystem at /sys/fs/bpf: nothing is attached (run 'attach' first)\n");
		return -ENOENT;
	}
	if (access(bgs_pin_root, F_OK)) {
		pr_warn("no bgswitch state at %s (run 'bgswitch attach IFACE' first)\n",
			bgs_pin_root);
		return -ENOENT;
	}
	if (lock) {
		err = state_lock(&st->lock_fd);
		if (err)
			goto out;
	}
	for (i = 0; i < BGS_M_COUNT; i++) {
		err = state_pin_path(path, sizeof(path), bgs_map_names[i]);
		if (err)
			goto out;
		st->fd[i] = bpf_obj_get(path);
		if (st->fd[i] < 0) {
			err = -errno;
			pr_warn("cannot open pinned map %s: %s (is the state complete? "
				"'attach' recreates it)\n",
				path, strerror(errno));
			goto out;
		}
	}
	if (bpf_map_lookup_elem(st->fd[BGS_M_CONFIG], &zero, &st->cfg)) {
		err = -errno;
		pr_warn("cannot read bgs_config: %s\n", strerror(errno));
		goto out;
	}
	err = state_check_layout(&st->cfg);
	if (err)
		goto out;
	st->sw = mmap(NULL, SWITCH_MMAP_LEN, PROT_READ | PROT_WRITE, MAP_SHARED,
		      st->fd[BGS_M_SWITCH], 0);
	if (st->sw == MAP_FAILED) {
		err = -errno;
		pr_warn("cannot map bgs_switch: %s\n", strerror(errno));
		goto out;
	}
	st->ncpus = libbpf_num_possible_cpus();
	if (st->ncpus <= 0) {
		err = st->ncpus ? st->ncpus : -EINVAL;
		pr_warn("cannot count possible CPUs\n");
		goto out;
	}
	return 0;
out:
	state_close(st);
	return err;
}

void state_close(struct bgs_state *st)
{
	int i;

	if (st->sw != MAP_FAILED && st->sw)
		munmap(st->sw, SWITCH_MMAP_LEN);
	st->sw = MAP_FAILED;
	for (i = 0; i < BGS_M_COUNT; i++) {
		if (st->fd[i] >= 0)
			close(st->fd[i]);
		st->fd[i] = -1;
	}
	if (st->lock_fd >= 0)
		close(st->lock_fd);
	st->lock_fd = -1;
}

struct bgs_switch switch_read(const struct bgs_state *st, __u32 svc)
{
	__u64 word = __atomic_load_n(&st->sw[svc], __ATOMIC_ACQUIRE);
	struct bgs_switch sw;

	memcpy(&sw, &word, sizeof(sw));
	return sw;
}

/* The one write that changes what new flows do: a single aligned 64-bit store. */
void switch_write(struct bgs_state *st, __u32 svc, struct bgs_switch sw)
{
	__u64 word;

	_Static_assert(sizeof(sw) == sizeof(word), "bgs_switch must be one 64-bit word");
	memcpy(&word, &sw, sizeof(word));
	__atomic_store_n(&st->sw[svc], word, __ATOMIC_RELEASE);
}

/* A service exists once its VIP entry points at its record: that entry is written last. */
bool service_get(const struct bgs_state *st, __u32 svc, struct bgs_service *out)
{
	struct bgs_vip vip;

	if (svc >= BGS_MAX_SERVICES || bpf_map_lookup_elem(st->fd[BGS_M_SERVICES], &svc, out) ||
	    !out->name[0])
		return false;
	return !bpf_map_lookup_elem(st->fd[BGS_M_VIPS], &out->vip, &vip) && vip.svc == svc;
}

int service_find(const struct bgs_state *st, const char *name, __u32 *svc, struct bgs_service *out)
{
	__u32 i;

	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		if (service_get(st, i, out) && !strncmp(out->name, name, BGS_NAME_LEN)) {
			*svc = i;
			return 0;
		}
	}
	pr_warn("unknown service '%s'\n", name);
	return -ENOENT;
}

int set_read(const struct bgs_state *st, __u32 svc, __u8 color, struct bgs_set *set)
{
	struct bgs_switch sw = switch_read(st, svc);
	__u32 idx = bgs_set_index(svc, color, sw.set_sel >> color);

	if (bpf_map_lookup_elem(st->fd[BGS_M_SETS], &idx, set)) {
		pr_warn("cannot read the backend set: %s\n", strerror(errno));
		return -errno;
	}
	if (set->count > BGS_MAX_BACKENDS)
		set->count = 0;
	return 0;
}

/* Does a set hold a backend that can take new flows (one of weight above 0)? */
bool set_takes_flows(const struct bgs_state *st, const struct bgs_set *set)
{
	struct bgs_backend be;
	__u32 i;

	for (i = 0; i < set->count && i < BGS_MAX_BACKENDS; i++)
		if (!bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &set->slot[i], &be) && be.weight)
			return true;
	return false;
}

/* Build the Maglev table of a set as a new inner map for bgs_tables. Returns its fd or -errno.
 * A set without a backend of weight above 0 gets a table of size 0: new flows are dropped
 * (no_backend), which is what an empty color does.
 */
static int table_make(const struct bgs_state *st, const struct bgs_service *rec,
		      const struct bgs_set *set)
{
	LIBBPF_OPTS(bpf_map_create_opts, copts, .map_flags = BPF_F_INNER_MAP);
	LIBBPF_OPTS(bpf_map_batch_opts, bopts);
	struct maglev_backend *mb = NULL;
	__u32 *keys = NULL, *vals = NULL, m = rec->table_size, n = 0, i, count;
	struct bgs_backend be;
	int fd = -1, err;

	mb = calloc(set->count ? set->count : 1, sizeof(*mb));
	keys = calloc((size_t)m + BGS_TABLE_HDR, sizeof(*keys));
	vals = calloc((size_t)m + BGS_TABLE_HDR, sizeof(*vals));
	if (!mb || !keys || !vals) {
		err = -ENOMEM;
		goto out;
	}
	for (i = 0; i < set->count && i < BGS_MAX_BACKENDS; i++) {
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &set->slot[i], &be))
			continue;
		maglev_key(&mb[n], be.addr, be.port, be.family);
		mb[n].slot = set->slot[i];
		mb[n].weight = be.weight;
		n++;
	}
	err = maglev_build(mb, n, m, vals + BGS_TABLE_HDR);
	if (err == -ENOENT)
		m = 0;
	else if (err)
		goto out;
	for (i = 0; i < n; i++) {
		char ebuf[BGS_ADDRSTR_LEN];

		if (!mb[i].weight || mb[i].positions)
			continue;
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &mb[i].slot, &be))
			continue;
		pr_warn("%s: backend %s gets no position in a table of %u: it takes no new flow "
			"(raise --table-size, or even out the weights)\n",
			rec->name, fmt_endpoint(be.addr, be.port, be.family, ebuf, sizeof(ebuf)),
			m);
	}
	vals[0] = m;
	count = m + BGS_TABLE_HDR;
	for (i = 0; i < count; i++)
		keys[i] = i;
	fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "bgs_table", sizeof(__u32), sizeof(__u32), count,
			    &copts);
	if (fd < 0) {
		err = -errno;
		pr_warn("cannot create a lookup table of %u entries: %s\n", count, strerror(errno));
		goto out;
	}
	if (bpf_map_update_batch(fd, keys, vals, &count, &bopts)) {
		err = -errno;
		pr_warn("cannot fill the lookup table: %s\n", strerror(errno));
		goto out;
	}
	err = 0;
out:
	free(mb);
	free(keys);
	free(vals);
	if (err && fd >= 0)
		close(fd);
	return err ? err : fd;
}

/* Write the idle buffers of the colors in mask (bit c: color c), sets and, with Maglev, their
 * tables; then make them all current with one switch store.
 */
int sets_commit(struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
		const struct bgs_set sets[BGS_NCOLORS], __u8 mask)
{
	struct bgs_switch sw = switch_read(st, svc);
	__u32 idx, next;
	__u8 c;
	int fd, err;

	for (c = 0; c < BGS_NCOLORS; c++) {
		if (!(mask & (1 << c)))
			continue;
		next = !((sw.set_sel >> c) & 1);
		idx = bgs_set_index(svc, c, next);
		if (bpf_map_update_elem(st->fd[BGS_M_SETS], &idx, &sets[c], BPF_ANY)) {
			err = -errno;
			pr_warn("cannot write the backend set: %s\n", strerror(errno));
			return err;
		}
		/* An empty color needs no table: the data plane finds its set empty. */
		if (rec->lb != BGS_LB_MAGLEV || !sets[c].count) {
			if (bpf_map_delete_elem(st->fd[BGS_M_TABLES], &idx) && errno != ENOENT)
				return -errno;
			continue;
		}
		fd = table_make(st, rec, &sets[c]);
		if (fd < 0)
			return fd;
		err = bpf_map_update_elem(st->fd[BGS_M_TABLES], &idx, &fd, BPF_ANY) ? -errno : 0;
		close(fd);
		if (err) {
			pr_warn("cannot install the lookup table: %s\n", strerror(-err));
			return err;
		}
	}
	fault_point("set-before-switch");
	sw.set_sel ^= mask;
	sw.generation++;
	switch_write(st, svc, sw);
	return 0;
}

/* Write the color's idle buffer, then make it current with one switch store. */
int set_commit(struct bgs_state *st, __u32 svc, __u8 color, const struct bgs_set *set)
{
	struct bgs_set sets[BGS_NCOLORS];
	struct bgs_service rec;

	if (!service_get(st, svc, &rec) && bpf_map_lookup_elem(st->fd[BGS_M_SERVICES], &svc, &rec))
		return -errno;
	sets[color & 1] = *set;
	return sets_commit(st, svc, &rec, sets, 1 << (color & 1));
}

/* Remove every lookup table of a service id (a new or a deleted service). */
int tables_clear(struct bgs_state *st, __u32 svc)
{
	__u32 i, idx;

	for (i = 0; i < 4; i++) {
		idx = (svc << 2) | i;
		if (bpf_map_delete_elem(st->fd[BGS_M_TABLES], &idx) && errno != ENOENT)
			return -errno;
	}
	return 0;
}

/* The current lookup table of a color: *table gets malloc'd entries 1 to M (M in *m), or NULL
 * with *m = 0 when the color has none. One batch read.
 */
int table_read(const struct bgs_state *st, __u32 svc, __u8 color, __u32 **table, __u32 *m)
{
	struct bgs_switch sw = switch_read(st, svc);
	__u32 idx = bgs_set_index(svc, color, sw.set_sel >> color), id, zero = 0, count, batch;
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	__u32 *keys = NULL, *vals = NULL;
	int fd, err = 0;

	*table = NULL;
	*m = 0;
	if (bpf_map_lookup_elem(st->fd[BGS_M_TABLES], &idx, &id))
		return errno == ENOENT ? 0 : -errno;
	fd = bpf_map_get_fd_by_id(id);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno; /* replaced since: as good as none */
	if (bpf_map_lookup_elem(fd, &zero, m)) {
		err = -errno;
		goto out;
	}
	if (!*m)
		goto out;
	count = *m + BGS_TABLE_HDR;
	keys = calloc(count, sizeof(*keys));
	vals = calloc(count, sizeof(*vals));
	if (!keys || !vals) {
		err = -ENOMEM;
		goto out;
	}
	if (bpf_map_lookup_batch(fd, NULL, &batch, keys, vals, &count, &opts) && errno != ENOENT) {
		err = -errno;
		goto out;
	}
	if (count != *m + BGS_TABLE_HDR || vals[0] != *m) {
		err = -EIO;
		goto out;
	}
	memmove(vals, vals + BGS_TABLE_HDR, *m * sizeof(*vals));
	*table = vals;
	vals = NULL;
out:
	if (err)
		*m = 0;
	free(keys);
	free(vals);
	close(fd);
	return err;
}

/* Set the node's flow-table insert limit: each CPU gets its part of the rate and the burst. */
void config_set_limits(struct bgs_config *cfg, __u32 rate, __u32 burst)
{
	int ncpus = libbpf_num_possible_cpus();

	if (ncpus < 1)
		ncpus = 1;
	cfg->node_flow_rate = rate;
	cfg->node_flow_burst = burst;
	cfg->new_flow_rate = rate ? (rate + ncpus - 1) / ncpus : 0;
	cfg->new_flow_burst = (burst + ncpus - 1) / ncpus;
}

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

/* Free a slot that no set names any more: forget its flows, its address, its counters. The
 * record keeps whose it was (service, color, address) with state FREE, which nothing serves:
 * a re-run of a `backend del` killed after this finds it and says it is done.
 */
int slot_release(struct bgs_state *st, __u32 slot)
{
	struct bgs_backend be;
	__u64 deleted;
	int err;

	if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be))
		return -errno;
	if (be.state == BGS_BACKEND_FREE)
		return 0;
	err = flows_delete_slot(st, slot, true, &deleted);
	if (err)
		return err;

	err = percpu_zero(st, BGS_M_BACKEND_STATS, slot, sizeof(struct bgs_backend_stats));
	if (err)
		return err;
	/* Local sockets still counted on it (cut by --force) stop counting: their release finds
	 * the slot free, or another backend in it, and leaves the new count alone.
	 */
	if (bpf_map_update_elem(st->fd[BGS_M_LOCAL_COUNTS], &slot, &(struct bgs_local_count){ 0 },
				BPF_ANY))
		return -errno;

	be.state = BGS_BACKEND_FREE;
	be.weight = 0;
	if (bpf_map_update_elem(st->fd[BGS_M_BACKENDS], &slot, &be, BPF_ANY))
		return -errno;
	err = addrs_resync(st);
	if (err)
		return err;
	pr_debug("released backend slot %u\n", slot);
	return 0;
}

/* Blank the free slots that still name svc: a new service of that id has no removed backends. */
int slots_forget(const struct bgs_state *st, __u32 svc)
{
	struct bgs_backend be, zero = { 0 };
	__u32 slot;

	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be))
			return -errno;
		if (be.state != BGS_BACKEND_FREE || be.svc != svc ||
		    !memcmp(&be, &zero, sizeof(be)))
			continue;
		if (bpf_map_update_elem(st->fd[BGS_M_BACKENDS], &slot, &zero, BPF_ANY))
			return -errno;
	}
	return 0;
}

/* Where each slot is named: (svc << 1 | color) + 1 of the current set of a visible service that
 * holds it, 0 for none.
 */
static int slots_in_sets(const struct bgs_state *st, const bool *visible, __u32 *set_of)
{
	struct bgs_set *set = malloc(sizeof(*set));
	__u32 svc, i;
	__u8 c;
	int err = 0;

	if (!set)
		return -ENOMEM;
	memset(set_of, 0, BGS_MAX_SLOTS * sizeof(*set_of));
	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		if (!visible[svc])
			continue;
		for (c = 0; c < BGS_NCOLORS; c++) {
			err = set_read(st, svc, c, set);
			if (err)
				goto out;
			for (i = 0; i < set->count; i++)
				if (set->slot[i] < BGS_MAX_SLOTS)
					set_of[set->slot[i]] = (svc << 1 | c) + 1;
		}
	}
out:
	free(set);
	return err;
}

/* Release every slot nothing needs any more: a draining slot no live flow points at, and the
 * orphans a command killed half way leaves behind. An active slot that is in no current set of
 * its service (a `backend add` killed before its set was committed, a `backend del` killed
 * after) is treated as draining: kept, marked draining, while live flows point at it, released
 * otherwise. A slot of a service that is gone, or was never finished, is released.
 */
int slots_collect(struct bgs_state *st)
{
	struct bgs_flow_census *c = NULL;
	struct bgs_backend *be = NULL;
	__u32 *set_of = NULL, slot;
	bool *visible = NULL, any = false;
	struct bgs_service rec;
	int err = 0;

	be = calloc(BGS_MAX_SLOTS, sizeof(*be));
	set_of = calloc(BGS_MAX_SLOTS, sizeof(*set_of));
	visible = calloc(BGS_MAX_SERVICES, sizeof(*visible));
	if (!be || !set_of || !visible) {
		err = -ENOMEM;
		goto out;
	}
	for (slot = 0; slot < BGS_MAX_SERVICES; slot++)
		visible[slot] = service_get(st, slot, &rec);
	err = slots_in_sets(st, visible, set_of);
	if (err)
		goto out;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be[slot]))
			be[slot].state = BGS_BACKEND_FREE;
		if (be[slot].state == BGS_BACKEND_FREE)
			continue;
		/* In its own service's current set: in use. Anything else is a candidate. */
		if (be[slot].svc < BGS_MAX_SERVICES && visible[be[slot].svc] &&
		    set_of[slot] == (be[slot].svc << 1 | be[slot].color) + 1)
			be[slot].state = BGS_BACKEND_FREE;
		else
			any = true;
	}
	if (!any)
		goto out;
	c = malloc(sizeof(*c));
	if (!c) {
		err = -ENOMEM;
		goto out;
	}
	err = flows_census(st, c);
	if (err)
		goto out;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		struct bgs_backend *b = &be[slot];
		bool gone = b->svc >= BGS_MAX_SERVICES || !visible[b->svc];

		if (b->state == BGS_BACKEND_FREE)
			continue;
		if (!gone && c->live[slot]) {
			if (b->state == BGS_BACKEND_ACTIVE) {
				pr_debug("slot %u is in no set but has live flows: draining\n",
					 slot);
				b->state = BGS_BACKEND_DRAINING;
				if (bpf_map_update_elem(st->fd[BGS_M_BACKENDS], &slot, b,
							BPF_ANY)) {
					err = -errno;
					goto out;
				}
			}
			continue;
		}
		if (b->state == BGS_BACKEND_ACTIVE || gone)
			pr_debug("collecting orphan slot %u\n", slot);
		err = slot_release(st, slot);
		if (err)
			goto out;
	}
out:
	free(c);
	free(be);
	free(set_of);
	free(visible);
	return err;
}

/* A service record left invisible by a command killed half way (added without its VIP entry,
 * or with its VIP entry deleted) is garbage: blank it. So is a VIP entry that names a service
 * that is not there.
 */
static int services_collect(struct bgs_state *st)
{
	struct bgs_service rec, blank = { 0 }, other;
	struct bgs_switch zero_sw = { 0 };
	struct bgs_vip_key key, next;
	struct bgs_vip vip;
	__u32 svc;
	int err;

	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		if (bpf_map_lookup_elem(st->fd[BGS_M_SERVICES], &svc, &rec) || !rec.name[0] ||
		    service_get(st, svc, &other))
			continue;
		pr_debug("collecting the unfinished service record %u (%.*s)\n", svc, BGS_NAME_LEN,
			 rec.name);
		switch_write(st, svc, zero_sw);
		err = tables_clear(st, svc);
		if (err)
			return err;
		if (bpf_map_update_elem(st->fd[BGS_M_SERVICES], &svc, &blank, BPF_ANY))
			return -errno;
	}
	for (err = bpf_map_get_next_key(st->fd[BGS_M_VIPS], NULL, &key); !err; key = next) {
		err = bpf_map_get_next_key(st->fd[BGS_M_VIPS], &key, &next);
		if (bpf_map_lookup_elem(st->fd[BGS_M_VIPS], &key, &vip))
			continue;
		if (service_get(st, vip.svc, &rec) && !memcmp(&rec.vip, &key, sizeof(key)))
			continue;
		pr_debug("deleting a VIP entry of no service\n");
		bpf_map_delete_elem(st->fd[BGS_M_VIPS], &key);
	}
	return 0;
}

struct addr_count {
	__u8 key[sizeof(struct bgs_backend_addr)];
	__u32 count;
	struct bgs_backend_ref ref; /* bgs_backend_addrs: the services of the address */
};

/* Add the services of b to a's, once each (`backend add` keeps them to BGS_ADDR_SVCS). */
static void addr_merge(struct addr_count *a, const struct addr_count *b)
{
	__u32 i, j;

	a->count += b->count;
	for (i = 0; i < b->ref.nsvc; i++) {
		for (j = 0; j < a->ref.nsvc && a->ref.svc[j] != b->ref.svc[i]; j++)
			;
		if (j == a->ref.nsvc && j < BGS_ADDR_SVCS)
			a->ref.svc[a->ref.nsvc++] = b->ref.svc[i];
	}
}

static int addr_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(((struct addr_count *)0)->key));
}

/* Make a reference-counted address map hold exactly want[0..n) (keys of key_size bytes). */
static int addrs_sync(struct bgs_state *st, enum bgs_map_id m, struct addr_count *want, size_t n,
		      size_t key_size)
{
	struct addr_count probe, *hit;
	__u8 key[sizeof(probe.key)], next[sizeof(probe.key)];
	size_t i, k = 0;
	int err;

	/* Sort, then merge equal keys into one with their counts added. */
	qsort(want, n, sizeof(*want), addr_cmp);
	for (i = 0; i < n; i++) {
		if (k && !memcmp(want[k - 1].key, want[i].key, sizeof(want[i].key))) {
			addr_merge(&want[k - 1], &want[i]);
		} else {
			want[k++] = want[i];
		}
	}
	n = k;
	memset(&probe, 0, sizeof(probe));
	for (err = bpf_map_get_next_key(st->fd[m], NULL, key); !err; memcpy(key, next, key_size)) {
		err = bpf_map_get_next_key(st->fd[m], key, next);
		memcpy(probe.key, key, key_size);
		hit = bsearch(&probe, want, n, sizeof(*want), addr_cmp);
		if (!hit) {
			pr_debug("deleting a stale entry of %s\n", bgs_map_names[m]);
			bpf_map_delete_elem(st->fd[m], key);
		}
	}
	for (i = 0; i < n; i++) {
		/* bgs_vip_addrs holds a count; bgs_backend_addrs a count and its services. */
		struct bgs_backend_ref have, ref = want[i].ref;
		size_t vsize = m == BGS_M_BACKEND_ADDRS ? sizeof(ref) : sizeof(ref.refs);

		ref.refs = want[i].count;
		memset(&have, 0, sizeof(have));
		if (!bpf_map_lookup_elem(st->fd[m], want[i].key, &have) &&
		    !memcmp(&have, &ref, vsize))
			continue;
		if (bpf_map_update_elem(st->fd[m], want[i].key, &ref, BPF_ANY))
			return -errno;
	}
	return 0;
}

/* Set the VIP filter's bit of an address (before its service's VIP entry is written). */
int vip_filter_add(struct bgs_state *st, const __u32 *addr)
{
	__u32 bit = bgs_vip_filter_bit(addr), word = bit >> 6;
	__u64 w = 0;

	bpf_map_lookup_elem(st->fd[BGS_M_VIP_FILTER], &word, &w);
	w |= 1ULL << (bit & 63);
	return bpf_map_update_elem(st->fd[BGS_M_VIP_FILTER], &word, &w, BPF_ANY) ? -errno : 0;
}

/* Set bgs_vip_filter to exactly the bits of the services' addresses: a bit is set before a
 * packet can need it (a service's VIP entry is written after this runs for it), and cleared
 * only once no service has it.
 */
static int vip_filter_sync(struct bgs_state *st)
{
	__u64 want[BGS_VIP_FILTER_WORDS] = { 0 }, have;
	struct bgs_service rec;
	__u32 i, bit;

	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		if (!service_get(st, i, &rec))
			continue;
		bit = bgs_vip_filter_bit(rec.vip.addr);
		want[bit >> 6] |= 1ULL << (bit & 63);
	}
	for (i = 0; i < BGS_VIP_FILTER_WORDS; i++) {
		if (!bpf_map_lookup_elem(st->fd[BGS_M_VIP_FILTER], &i, &have) && have == want[i])
			continue;
		if (bpf_map_update_elem(st->fd[BGS_M_VIP_FILTER], &i, &want[i], BPF_ANY))
			return -errno;
	}
	return 0;
}

/* Recount bgs_vip_addrs from the services and bgs_backend_addrs from the slots in use, so that
 * a command killed between a reference count and the entry it counts leaves nothing stale; and
 * set the VIP filter from the services.
 */
int addrs_resync(struct bgs_state *st)
{
	struct addr_count *want = calloc(BGS_MAX_SLOTS, sizeof(*want));
	struct bgs_service rec;
	struct bgs_backend be;
	__u32 i;
	size_t n = 0;
	int err;

	if (!want)
		return -ENOMEM;
	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		struct bgs_vip_addr va = { 0 };

		if (!service_get(st, i, &rec))
			continue;
		memcpy(va.addr, rec.vip.addr, sizeof(va.addr));
		va.family = rec.vip.family;
		memset(&want[n], 0, sizeof(want[n]));
		memcpy(want[n].key, &va, sizeof(va));
		want[n++].count = 1;
	}
	err = addrs_sync(st, BGS_M_VIP_ADDRS, want, n, sizeof(struct bgs_vip_addr));
	if (!err)
		err = vip_filter_sync(st);
	if (err)
		goto out;
	n = 0;
	for (i = 0; i < BGS_MAX_SLOTS; i++) {
		struct bgs_backend_addr ba = { 0 };

		if (bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &i, &be) ||
		    be.state == BGS_BACKEND_FREE)
			continue;
		memcpy(ba.addr, be.addr, sizeof(ba.addr));
		ba.port = be.port;
		ba.proto = be.proto;
		ba.family = be.family;
		memset(&want[n], 0, sizeof(want[n]));
		memcpy(want[n].key, &ba, sizeof(ba));
		want[n].ref.svc[0] = be.svc;
		want[n].ref.nsvc = 1;
		want[n++].count = 1;
	}
	err = addrs_sync(st, BGS_M_BACKEND_ADDRS, want, n, sizeof(struct bgs_backend_addr));
out:
	free(want);
	return err;
}

/* Bring the state back to consistency after a command was killed between two of its map
 * writes: unfinished service records, orphan slots, stale reference counts. Every command that
 * changes services or backends runs it first, under the lock; so do gc and the exporter.
 */
int state_repair(struct bgs_state *st)
{
	int err;

	err = slots_collect(st);
	if (!err)
		err = services_collect(st);
	if (!err)
		err = addrs_resync(st);
	return err;
}

/* --if-generation: the change goes ahead only if the service is still at generation want (a
 * compare-and-swap under the lock). want < 0: unconditional.
 */
int generation_check(const struct bgs_state *st, __u32 svc, const char *name, __s64 want)
{
	__u32 gen = switch_read(st, svc).generation;

	if (want < 0 || gen == (__u32)want)
		return 0;
	pr_warn("%s: generation is %u, not %lld; someone changed it first (--if-generation)\n",
		name, gen, (long long)want);
	return BGS_ERR_GENERATION;
}

/* Sum a per-CPU value made of nfields __u64 counters. */
int percpu_sum(const struct bgs_state *st, enum bgs_map_id m, __u32 key, __u64 *out, size_t nfields)
{
	__u64 *vals = calloc((size_t)st->ncpus * nfields, sizeof(__u64));
	size_t f;
	int cpu;

	if (!vals)
		return -ENOMEM;
	memset(out, 0, nfields * sizeof(*out));
	if (bpf_map_lookup_elem(st->fd[m], &key, vals)) {
		int err = -errno;

		free(vals);
		return err;
	}
	for (cpu = 0; cpu < st->ncpus; cpu++)
		for (f = 0; f < nfields; f++)
			out[f] += vals[cpu * nfields + f];
	free(vals);
	return 0;
}

/* Reset a per-CPU value (value_size bytes, a multiple of 8) on every CPU. */
int percpu_zero(const struct bgs_state *st, enum bgs_map_id m, __u32 key, size_t value_size)
{
	void *zero = calloc(st->ncpus, value_size);
	int err = 0;

	if (!zero)
		return -ENOMEM;
	if (bpf_map_update_elem(st->fd[m], &key, zero, BPF_ANY))
		err = -errno;
	free(zero);
	return err;
}

/* Add delta to a reference-counted hash entry (a __u32 value), deleting it at zero. */
int refcount_add(const struct bgs_state *st, enum bgs_map_id m, const void *key, int delta)
{
	__u32 refs = 0;

	bpf_map_lookup_elem(st->fd[m], key, &refs);
	if ((int)refs + delta <= 0)
		return bpf_map_delete_elem(st->fd[m], key) && errno != ENOENT ? -errno : 0;
	refs += delta;
	return bpf_map_update_elem(st->fd[m], key, &refs, BPF_ANY) ? -errno : 0;
}

/* End the second chance of every service sent wholly to one color whose other color has no live
 * flow left: from then on a non-SYN miss is re-pinned to where the share puts it. A service
 * split between colors keeps it (both colors take flows). Not a change to the service: the
 * generation stays.
 */
int drain_settle(struct bgs_state *st)
{
	struct bgs_flow_census *c = NULL;
	struct bgs_backend be;
	__u64 live[BGS_MAX_SERVICES] = { 0 };
	bool any = false;
	__u32 svc, slot;
	int err;

	for (svc = 0; svc < BGS_MAX_SERVICES && !any; svc++)
		any = switch_read(st, svc).flags & BGS_SW_DRAINING;
	if (!any)
		return 0;
	c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	err = flows_census(st, c);
	if (err)
		goto out;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		struct bgs_switch sw;

		if (!c->live[slot] || bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be) ||
		    be.state == BGS_BACKEND_FREE || be.svc >= BGS_MAX_SERVICES)
			continue;
		sw = switch_read(st, be.svc);
		if (be.color != share_color(sw.share))
			live[be.svc] += c->live[slot];
	}
	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		struct bgs_switch sw = switch_read(st, svc);

		if (!(sw.flags & BGS_SW_DRAINING) || live[svc] ||
		    share_color(sw.share) == BGS_COLOR_NONE)
			continue;
		sw.flags &= ~BGS_SW_DRAINING;
		switch_write(st, svc, sw);
		pr_debug("service %u: the other color drained, second chance off\n", svc);
	}
out:
	free(c);
	return err;
}
