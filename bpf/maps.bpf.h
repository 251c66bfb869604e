/* SPDX-License-Identifier: GPL-2.0 */
/* maps.bpf.h: every map of the data plane, pinned by name, plus the counter helpers. */
#ifndef BGS_MAPS_BPF_H
#define BGS_MAPS_BPF_H

#include "common.bpf.h"

/* Run-time settings (timeouts, layout version): one entry, written by `attach`. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bgs_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_config SEC(".maps");

/* Service lookup: (VIP, port, protocol) to service id. A miss means "not ours". */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BGS_MAX_SERVICES);
	__type(key, struct bgs_vip_key);
	__type(value, struct bgs_vip);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_vips SEC(".maps");

/* VIP addresses as a Bloom filter (see bgs_vip_filter_bit()): the non-VIP packet's fast exit. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BGS_VIP_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_vip_filter SEC(".maps");

/* Control-plane record of each service (name, VIP), indexed by service id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BGS_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct bgs_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_services SEC(".maps");

/* The switch: green share, generation and set buffers of each service, one 8-byte word. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BGS_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct bgs_switch);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_switch SEC(".maps");

/* Backend sets: two buffers per service and color, selected by bgs_switch.set_sel. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BGS_MAX_SERVICES * 4);
	__type(key, __u32);
	__type(value, struct bgs_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_sets SEC(".maps");

/* Lookup tables (Maglev): one per service, color and buffer, keyed like bgs_sets. Each inner
 * map is an array of __u32 made by user space at the size of the service's table (entry 0: the
 * size M; entries 1 to M: backend slots); a service with `--lb modulo` has none.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, BGS_MAX_SERVICES * 4);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(
		values, struct {
			__uint(type, BPF_MAP_TYPE_ARRAY);
			__uint(max_entries, BGS_TABLE_HDR + 1);
			__type(key, __u32);
			__type(value, __u32);
			__uint(map_flags, BPF_F_INNER_MAP);
		});
} bgs_tables SEC(".maps");

/* Backends by slot, the identity that flow entries and counters refer to. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BGS_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct bgs_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_backends SEC(".maps");

/* Backend (address, port, protocol) to its reference count and the services it serves: the
 * egress program's first filter, and where a reply looks for its flow.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BGS_MAX_SLOTS);
	__type(key, struct bgs_backend_addr);
	__type(value, struct bgs_backend_ref);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_backend_addrs SEC(".maps");

/* Flow table: one entry per connection, (client, port, service) to the backend that took its
 * first packet; replies find it too.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BGS_DEFAULT_FLOWS);
	__type(key, struct bgs_conn_key);
	__type(value, struct bgs_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_flows SEC(".maps");

/* The fast path's next hop toward each backend slot, per CPU (see struct bgs_nexthop). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BGS_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct bgs_nexthop);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_nexthops SEC(".maps");

/* Addresses services listen on, with a reference count: fragments carry no port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BGS_MAX_SERVICES);
	__type(key, struct bgs_vip_addr);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_vip_addrs SEC(".maps");

/* Fragmented datagrams: where the first fragment went, so the later ones follow it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BGS_FRAG_ENTRIES);
	__type(key, struct bgs_frag_key);
	__type(value, struct bgs_frag);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_frags SEC(".maps");

/* Interfaces this state is attached to, by ifindex (control plane only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BGS_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct bgs_iface);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_ifaces SEC(".maps");

/* Flow-table insert budget of each CPU (a token bucket; see bgs_config.new_flow_rate). */
struct bgs_bucket {
	__u64 last_ns;
	__u64 tokens; /* in millionths of an insert */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bgs_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_insert_budget SEC(".maps");

/* Local clients (sock.bpf.h). The network namespaces whose sockets the cgroup hooks serve, by
 * netns cookie (`bgswitch local add`): a socket of any other namespace is never touched.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BGS_MAX_LOCAL_NETNS);
	__type(key, __u64);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_local_netns SEC(".maps");

/* Local sockets per backend slot, open and ever opened: live flows without a flow entry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BGS_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct bgs_local_count);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_local_counts SEC(".maps");

/* Each local client socket's backend (struct bgs_sock), freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct bgs_sock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_socks SEC(".maps");

/* Node-wide counters by enum bgs_stat, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BGS_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_stats SEC(".maps");

/* Dropped packets by enum bgs_drop_reason, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BGS_DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_drops SEC(".maps");

/* Traffic and new flows per backend slot, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BGS_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct bgs_backend_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_backend_stats SEC(".maps");

/* Misses and drops per service, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BGS_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct bgs_service_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bgs_service_stats SEC(".maps");

static __always_inline void stat_inc(__u32 id)
{
	__u64 *v = bpf_map_lookup_elem(&bgs_stats, &id);

	if (v)
		*v += 1;
}

static __always_inline struct bgs_service_stats *stat_service(__u32 svc)
{
	return bpf_map_lookup_elem(&bgs_service_stats, &svc);
}

/* Count a drop that belongs to no service, and return XDP_DROP. */
static __always_inline int stat_drop_node(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&bgs_drops, &reason);

	if (v)
		*v += 1;
	return XDP_DROP;
}

/* Count a service's drop by its reason, and return XDP_DROP. */
static __always_inline int stat_drop(__u32 svc, __u32 reason)
{
	struct bgs_service_stats *ss = stat_service(svc);

	if (ss && reason < BGS_DROP_MAX)
		ss->drops[reason]++;
	return stat_drop_node(reason);
}

static __always_inline struct bgs_backend_stats *stat_backend(__u32 slot)
{
	return bpf_map_lookup_elem(&bgs_backend_stats, &slot);
}

#endif /* BGS_MAPS_BPF_H */
