/* SPDX-License-Identifier: GPL-2.0 */
/* snapshot.h: one consistent read of services, backends, live flows and counters, for the views. */
#ifndef BGS_SNAPSHOT_H
#define BGS_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <linux/types.h>
#include "bgswitch.h"
#include "state.h"

struct bgs_backend_view {
	__u32 slot;
	struct bgs_backend be;
	struct bgs_backend_stats st;
	__u32 live; /* flow entries and local sockets */
	__u32 local; /* local clients' sockets (cgroup hooks) among them */
	__u64 local_opened; /* local sockets ever given this backend (not in st.new_flows) */
	__u32 positions; /* of the color's lookup table (Maglev) it holds */
};

struct bgs_color_view {
	struct bgs_backend_view *backends; /* the set's backends in set order, then draining ones */
	size_t nbackends;
	__u64 live;
	__u64 local;
	struct bgs_backend_stats tot; /* sum over the color's backends */
	__u32 table_size; /* M of the color's lookup table, 0 if it has none */
};

struct bgs_service_view {
	__u32 svc;
	struct bgs_service rec;
	struct bgs_switch sw;
	struct bgs_service_stats st;
	struct bgs_color_view color[BGS_NCOLORS];
};

struct bgs_snapshot {
	__u64 taken_ns;
	struct bgs_service_view *svcs;
	size_t nsvcs;
	__u64 stats[BGS_STAT_MAX];
	__u64 drops[BGS_DROP_MAX];
	__u64 flow_entries;
	__u64 live_total;
	__u64 local_total; /* local clients' sockets, counted in live_total too */
	__u64 evicted; /* entries the LRU dropped: inserts - entries - collected */
};

extern const char *const bgs_stat_names[BGS_STAT_MAX];
extern const bool bgs_stat_passed[BGS_STAT_MAX]; /* passed untouched: the exporter's reasons */
extern const char *const bgs_drop_names[BGS_DROP_MAX];

int snapshot_take(const struct bgs_state *st, const char *only, struct bgs_snapshot *snap);
void snapshot_free(struct bgs_snapshot *snap);
const struct bgs_backend_view *snapshot_backend(const struct bgs_snapshot *snap, __u32 svc,
						__u32 slot);
const char *backend_state_name(__u8 state);

#endif /* BGS_SNAPSHOT_H */
