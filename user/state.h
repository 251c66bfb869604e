/* SPDX-License-Identifier: GPL-2.0 */
/* state.h: the pinned state under the pin root: opening, locking, and typed access to its maps
 * (state.c); walks of the flow table (flows.c); its garbage collection and repair (repair.c).
 */
#ifndef BGS_STATE_H
#define BGS_STATE_H

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <linux/types.h>
#include "bgswitch.h"

#define BGS_DEFAULT_PIN_ROOT "/sys/fs/bpf/bgswitch"

/* Errors with an exit status of their own (main.c maps them; bgswitch(8), EXIT STATUS). */
#define BGS_ERR_CHECK (-EHOSTUNREACH) /* 3: a backend failed its check */
#define BGS_ERR_GUARD (-ECANCELED) /* 4: the guard rolled the flip back */
#define BGS_ERR_TIMEOUT (-ETIMEDOUT) /* 5: the old color did not drain in time */
#define BGS_ERR_GENERATION (-ESTALE) /* 6: --if-generation did not match */
#define BGS_ERR_USAGE (-EBADRQC) /* 2: no subcommand, or an unknown one */
#define BGS_PROG_DIR "progs"

enum bgs_map_id {
	BGS_M_CONFIG,
	BGS_M_VIPS,
	BGS_M_SERVICES,
	BGS_M_SWITCH,
	BGS_M_SETS,
	BGS_M_BACKENDS,
	BGS_M_BACKEND_ADDRS,
	BGS_M_FLOWS,
	BGS_M_NEXTHOPS,
	BGS_M_VIP_FILTER,
	BGS_M_IFACES,
	BGS_M_STATS,
	BGS_M_DROPS,
	BGS_M_BACKEND_STATS,
	BGS_M_SERVICE_STATS,
	BGS_M_VIP_ADDRS,
	BGS_M_FRAGS,
	BGS_M_TX_PORTS,
	BGS_M_INSERT_BUDGET,
	BGS_M_TABLES,
	BGS_M_LOCAL_NETNS,
	BGS_M_LOCAL_COUNTS,
	BGS_M_SOCKS,
	BGS_M_COUNT,
};

#define BGS_MAP_BIT(m) (1U << (m))
#define BGS_MAPS_ALL ((1U << BGS_M_COUNT) - 1)
/* What flip, shift, rollout, rollback, check and drain touch (their checks, guard and drain). */
#define BGS_MAPS_CUTOVER                                                                     \
	(BGS_MAP_BIT(BGS_M_CONFIG) | BGS_MAP_BIT(BGS_M_VIPS) | BGS_MAP_BIT(BGS_M_SERVICES) | \
	 BGS_MAP_BIT(BGS_M_SWITCH) | BGS_MAP_BIT(BGS_M_SETS) | BGS_MAP_BIT(BGS_M_BACKENDS) | \
	 BGS_MAP_BIT(BGS_M_FLOWS) | BGS_MAP_BIT(BGS_M_BACKEND_STATS) |                       \
	 BGS_MAP_BIT(BGS_M_LOCAL_COUNTS))
_Static_assert(BGS_M_COUNT < 32, "a map mask is 32 bits");

/* The service index: service name -> id, a hash map pinned beside the data plane's maps that no
 * program reads (so no part of the map layout), made by the first command that opens the state.
 */
#define BGS_INDEX_NAME "bgs_svc_index"

extern const char *const bgs_map_names[BGS_M_COUNT];
extern const char *bgs_pin_root;

struct bgs_state {
	int fd[BGS_M_COUNT];
	__u64 *sw; /* bgs_switch, mmapped: one 64-bit word per service */
	int lock_fd;
	int index_fd; /* the service index, or -1: service_find() scans */
	int ncpus;
	struct bgs_config cfg;
};

/* Per-slot figures gathered in one pass over the flow table, plus the local clients' open
 * sockets (bgs_local_counts): live[] and live_total count both, local[] and local_total these.
 */
struct bgs_flow_census {
	__u32 live[BGS_MAX_SLOTS];
	__u32 local[BGS_MAX_SLOTS];
	__u64 local_opened[BGS_MAX_SLOTS]; /* sockets ever given the slot's backend */
	__u64 entries;
	__u64 live_total;
	__u64 local_total;
};

int state_need_root(void);
int state_prepare_fs(bool *created);
int state_lock(int *lock_fd);
int state_open(struct bgs_state *st, bool lock);
int state_open_maps(struct bgs_state *st, bool lock, __u32 maps);
void state_close(struct bgs_state *st);
int state_check_layout(const struct bgs_config *cfg);
int state_pin_path(char *buf, size_t len, const char *name);

struct bgs_switch switch_read(const struct bgs_state *st, __u32 svc);
void switch_write(struct bgs_state *st, __u32 svc, struct bgs_switch sw);

bool service_get(const struct bgs_state *st, __u32 svc, struct bgs_service *out);
int service_find(const struct bgs_state *st, const char *name, __u32 *svc, struct bgs_service *out);
int set_read(const struct bgs_state *st, __u32 svc, __u8 color, struct bgs_set *set);
int set_commit(struct bgs_state *st, __u32 svc, __u8 color, const struct bgs_set *set);
int sets_commit(struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
		const struct bgs_set sets[BGS_NCOLORS], __u8 mask);
int tables_clear(struct bgs_state *st, __u32 svc);
int table_read(const struct bgs_state *st, __u32 svc, __u8 color, __u32 **table, __u32 *m);
bool set_takes_flows(const struct bgs_state *st, const struct bgs_set *set);

void config_set_limits(struct bgs_config *cfg, __u32 rate, __u32 burst);
int generation_check(const struct bgs_state *st, __u32 svc, const char *name, __s64 want);
int percpu_sum(const struct bgs_state *st, enum bgs_map_id m, __u32 key, __u64 *out,
	       size_t nfields);
int vip_filter_add(struct bgs_state *st, const __u32 *addr);
int refcount_add(const struct bgs_state *st, enum bgs_map_id m, const void *key, int delta);
int percpu_zero(const struct bgs_state *st, enum bgs_map_id m, __u32 key, size_t value_size);

/* index.c */
void svc_index_open(struct bgs_state *st);
int svc_index_get(const struct bgs_state *st, const char *name, __u32 *svc);
void svc_index_set(const struct bgs_state *st, const char *name, __u32 svc);
void svc_index_forget(const struct bgs_state *st, const char *name);

/* flows.c */
bool flow_live(const struct bgs_state *st, const struct bgs_conn_key *k, const struct bgs_flow *f,
	       __u64 now);
int flows_scan(const struct bgs_state *st,
	       int (*cb)(const struct bgs_conn_key *k, const struct bgs_flow *f, void *ctx),
	       void *ctx);
int flows_census(const struct bgs_state *st, struct bgs_flow_census *c);
int flows_delete_slot(struct bgs_state *st, __u32 slot, bool live_too, __u64 *deleted);
int flows_collect(struct bgs_state *st, __u64 *deleted);

/* repair.c */
int slot_release(struct bgs_state *st, __u32 slot);
int slots_forget(const struct bgs_state *st, __u32 svc);
int slots_collect(struct bgs_state *st);
int drain_settle(struct bgs_state *st);
int state_repair(struct bgs_state *st);
int addrs_resync(struct bgs_state *st);

#endif /* BGS_STATE_H */
