// SPDX-License-Identifier: GPL-2.0
/* state.c: the pinned state under the pin root: opening, locking, and typed access to its maps. */
#include <errno.h>
#include <fcntl.h>
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

/* Open the pinned maps of the mask (BGS_MAP_BIT of each; bgs_config and bgs_switch always), the
 * others' fds staying -1. A command that opens what it touches saves a system call or two per
 * map it does not: a flip needs 9 of the 23.
 */
static int state_open_fds(struct bgs_state *st, __u32 maps)
{
	char path[PATH_MAX];
	int i, err;

	for (i = 0; i < BGS_M_COUNT; i++) {
		if (!(maps & BGS_MAP_BIT(i)))
			continue;
		err = state_pin_path(path, sizeof(path), bgs_map_names[i]);
		if (err)
			return err;
		st->fd[i] = bpf_obj_get(path);
		if (st->fd[i] < 0) {
			err = -errno;
			pr_warn("cannot open pinned map %s: %s (is the state complete? "
				"'attach' recreates it)\n",
				path, strerror(errno));
			return err;
		}
	}
	return 0;
}

int state_open_maps(struct bgs_state *st, bool lock, __u32 maps)
{
	__u32 zero = 0;
	int i, err;

	memset(st, 0, sizeof(*st));
	for (i = 0; i < BGS_M_COUNT; i++)
		st->fd[i] = -1;
	st->lock_fd = -1;
	st->index_fd = -1;
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
	err = state_open_fds(st, maps | BGS_MAP_BIT(BGS_M_CONFIG) | BGS_MAP_BIT(BGS_M_SWITCH));
	if (err)
		goto out;
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
	svc_index_open(st);
	return 0;
out:
	state_close(st);
	return err;
}

int state_open(struct bgs_state *st, bool lock)
{
	return state_open_maps(st, lock, BGS_MAPS_ALL);
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
	if (st->index_fd >= 0)
		close(st->index_fd);
	st->index_fd = -1;
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

/* One id after another, as the data plane numbers them: the first visible service of the name. */
static int service_scan(const struct bgs_state *st, const char *name, __u32 *svc,
			struct bgs_service *out)
{
	__u32 i;

	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		if (service_get(st, i, out) && !strncmp(out->name, name, BGS_NAME_LEN)) {
			*svc = i;
			return 0;
		}
	}
	return -ENOENT;
}

/* A service by its name: through the service index (three system calls), and by a scan of the
 * ids when the index has no entry for it or a stale one, which then sets the entry right.
 */
int service_find(const struct bgs_state *st, const char *name, __u32 *svc, struct bgs_service *out)
{
	if (!svc_index_get(st, name, svc) && service_get(st, *svc, out) &&
	    !strncmp(out->name, name, BGS_NAME_LEN))
		return 0;
	if (service_scan(st, name, svc, out)) {
		svc_index_forget(st, name);
		pr_warn("unknown service '%s'\n", name);
		return -ENOENT;
	}
	svc_index_set(st, name, *svc);
	return 0;
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

/* Set the VIP filter's bit of an address (before its service's VIP entry is written). */
int vip_filter_add(struct bgs_state *st, const __u32 *addr)
{
	__u32 bit = bgs_vip_filter_bit(addr), word = bit >> 6;
	__u64 w = 0;

	bpf_map_lookup_elem(st->fd[BGS_M_VIP_FILTER], &word, &w);
	w |= 1ULL << (bit & 63);
	return bpf_map_update_elem(st->fd[BGS_M_VIP_FILTER], &word, &w, BPF_ANY) ? -errno : 0;
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
