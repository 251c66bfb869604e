/* SPDX-License-Identifier: GPL-2.0 */
/* bgswitch.h: the one definition shared by the BPF programs and the bgswitch command.
 *
 * It holds only fixed-width __u* types, BGS_* constants, map keys and values, colors, and
 * counter and drop-reason ids. It includes neither libc nor vmlinux.h: the includer provides
 * the __u8/__u16/__u32/__u64 types (vmlinux.h on the BPF side, <linux/types.h> in user space).
 */
#ifndef BGSWITCH_H
#define BGSWITCH_H

/* Version of the pinned map layout. Bump it whenever a key, a value or a map changes shape, so
 * that a build never misreads state pinned by another one.
 */
#define BGS_LAYOUT_VERSION 4

/* Map sizes. Each is a default that a build can override with -D. */
#ifndef BGS_MAX_SERVICES
#define BGS_MAX_SERVICES 1024 /* services (VIP:port:proto) per node */
#endif
#ifndef BGS_MAX_BACKENDS
#define BGS_MAX_BACKENDS 256 /* backends in one color of one service; a power of two */
#endif
#ifndef BGS_TABLE_SIZE
#define BGS_TABLE_SIZE 16381 /* default Maglev table size, a prime: > 100 x 163 backends */
#endif
#define BGS_TABLE_MIN 251 /* smallest table `service add --table-size` accepts (a prime) */
#ifndef BGS_TABLE_MAX
#define BGS_TABLE_MAX 131071 /* largest table `service add --table-size` accepts (a prime) */
#endif
#define BGS_WEIGHT_MAX 1000 /* largest backend weight */
#ifndef BGS_MAX_SLOTS
#define BGS_MAX_SLOTS 8192 /* backend identities on the node, live or draining; at most 65536 */
#endif
#define BGS_ADDR_SVCS 4 /* services one backend address and port may serve at once */
#ifndef BGS_DEFAULT_FLOWS
#define BGS_DEFAULT_FLOWS (1 << 20) /* flow-table entries; `attach --flows N` overrides */
#endif
#ifndef BGS_FRAG_ENTRIES
#define BGS_FRAG_ENTRIES 16384 /* fragmented datagrams tracked at once */
#endif
#ifndef BGS_MAX_EXTHDRS
#define BGS_MAX_EXTHDRS 6 /* IPv6 extension headers walked before giving up */
#endif
#ifndef BGS_MAX_IFACES
#define BGS_MAX_IFACES 64 /* interfaces one pinned state can be attached to */
#endif

#define BGS_NAME_LEN 32 /* service name, NUL included */
#define BGS_IFNAME_LEN 16

/* Default timeouts, in seconds; `attach` writes them to bgs_config. */
#define BGS_TCP_IDLE_SEC 900 /* an established TCP flow with no packet is dead after this */
#define BGS_UDP_IDLE_SEC 30 /* a UDP flow with no packet is dead after this */
#define BGS_CLOSING_SEC 10 /* a TCP flow after RST or FIN from both sides */

/* Default flow-table insert limit (`bgswitch limits`), for the whole node: the flow table's size
 * every BGS_NEW_FLOW_TURNOVER seconds, with a burst of an eighth of the table. The node's budget is
 * split evenly between its CPUs (bgs_config holds each CPU's part), so it does not grow with them.
 */
#define BGS_NEW_FLOW_TURNOVER 2
#define BGS_NEW_FLOW_BURST_DIV 8

/* A flow's last-seen time is kept in units of 2^BGS_SEEN_SHIFT ns (16.8 ms) in 32 bits: a
 * precision far below every timeout, and 2.3 years before it wraps.
 */
#define BGS_SEEN_SHIFT 24

/* The fast path's next hop toward a backend is looked up again after this long (ns). */
#ifndef BGS_NEXTHOP_NS
#define BGS_NEXTHOP_NS 1000000000ULL
#endif

/* Fixed identifiers of the TC egress filter, so that detach removes only ours. */
#define BGS_TC_HANDLE 0xb65
#define BGS_TC_PRIORITY 0xb65

enum bgs_color {
	BGS_BLUE = 0,
	BGS_GREEN = 1,
	BGS_NCOLORS = 2,
	BGS_COLOR_NONE = 0xff, /* no color (a split between both, or nothing yet) */
};

/* bgs_vips key: what a packet must match to be touched at all. Addresses are in network byte
 * order; an IPv4 address sits in addr[0] with addr[1..3] zero.
 */
struct bgs_vip_key {
	__u32 addr[4];
	__u16 port; /* network byte order */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family; /* BGS_AF_INET or BGS_AF_INET6 */
};

#define BGS_AF_INET 4
#define BGS_AF_INET6 6

/* bgs_vip_filter: a one-hash Bloom filter of the VIP addresses, BGS_VIP_FILTER_WORDS words of
 * 64 bits. A packet whose destination's bit is clear is not for a service, and skips the
 * bgs_vips hash lookup: most of a node's traffic costs one array read. User space sets the bits
 * of every service's address (a stale bit only costs that lookup).
 */
#define BGS_VIP_FILTER_WORDS 64

static inline __u32 bgs_vip_filter_bit(const __u32 *addr)
{
	return ((addr[0] ^ addr[1] ^ addr[2] ^ addr[3]) * 0x9e3779b1u) >> 20; /* 0 to 4095 */
}

/* bgs_vips value */
struct bgs_vip {
	__u32 svc; /* service id: index into bgs_switch, bgs_services and bgs_sets */
	__u32 flags; /* BGS_VIP_* */
};

/* bgs_vip.flags. SPLIT_CLIENT: a split between colors goes by a hash of the client's address
 * alone (`--split-by client`), so that every connection of one client goes to the same color
 * at a given share; by default it goes by the flow's hash.
 */
#define BGS_VIP_SPLIT_CLIENT 0x1

/* bgs_switch value, one per service, 8 bytes, written by user space with one aligned 64-bit
 * store (the map is mmapable). A flip, a rollback, a shift and a backend-set change are each
 * exactly one such store; the data plane reads the word once per new flow.
 *
 * share is the part of new flows that go to green, in units of 0.01 %: 0 sends every new flow
 * to blue, BGS_SHARE_ALL every one to green (that is all a flip writes), and a value between
 * splits them by a hash of the flow, or of the client's address (BGS_VIP_SPLIT_CLIENT):
 * bgs_share_bucket() < share goes green, so that raising the share only ever moves flows from
 * blue to green.
 */
struct bgs_switch {
	__u32 generation; /* bumped by every change to the service */
	__u32 share : 14; /* green share of new flows, 0 to BGS_SHARE_ALL */
	__u32 prev_share : 14; /* share before the last change, if BGS_SW_HAS_PREV */
	__u32 set_sel : 2; /* bit c selects which of the two buffers color c uses */
	__u32 flags : 2; /* BGS_SW_* */
};

#define BGS_SHARE_ALL 10000 /* 100 %: the share is in 0.01 % steps */

/* bgs_switch.flags. DRAINING: flows of the share before the last change may still be live. A
 * TCP segment without SYN that misses the flow table then gets a second chance: it is re-pinned
 * as prev_share would have placed it, since that is where connections older than the change
 * live. User space sets it with every change and clears it once the color that lost all its
 * share has drained. HAS_PREV: prev_share is meaningful (there is something to roll back to).
 */
#define BGS_SW_DRAINING 0x1
#define BGS_SW_HAS_PREV 0x2

/* murmur3's 32-bit finalizer: every input bit moves every output bit. */
static inline __u32 bgs_fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The bucket, 0 to BGS_SHARE_ALL - 1, of a flow in the split between colors, from its flow hash
 * h: remixed (the finalizer on a seeded value) so that it does not follow the table position
 * h % M. tests/lib/model.py mirrors it.
 */
static inline __u32 bgs_share_bucket(__u32 h)
{
	return bgs_fmix32(h ^ 0x9e3779b9) % BGS_SHARE_ALL;
}

/* The color a new flow with flow hash h gets under a share. */
static inline __u8 bgs_share_color(__u32 h, __u32 share)
{
	if (!share)
		return BGS_BLUE;
	if (share >= BGS_SHARE_ALL)
		return BGS_GREEN;
	return bgs_share_bucket(h) < share ? BGS_GREEN : BGS_BLUE;
}

/* bgs_sets and bgs_tables key: (svc << 2) | (color << 1) | buffer. Two buffers per color let
 * user space write a whole new set and lookup table while packets read the other, then switch
 * with one bgs_switch store.
 */
static inline __u32 bgs_set_index(__u32 svc, __u32 color, __u32 buf)
{
	return (svc << 2) | ((color & 1) << 1) | (buf & 1);
}

/* bgs_sets value: the backends of one color of one service. New flows are spread over them by
 * the color's lookup table in bgs_tables (Maglev), or, for a service without tables
 * (`--lb modulo`), by flow hash modulo count.
 */
struct bgs_set {
	__u32 count;
	__u32 slot[BGS_MAX_BACKENDS]; /* indexes into bgs_backends */
};

/* bgs_backends value, indexed by slot. A slot is the backend's identity: it is not reused while
 * any flow points at it (user space frees it only when no live flow references it).
 */
struct bgs_backend {
	__u32 addr[4];
	__u16 port; /* network byte order */
	__u8 family;
	__u8 state; /* BGS_BACKEND_* */
	__u32 svc;
	__u8 color;
	__u8 proto;
	__u16 weight; /* share of its color's table, relative to the others (0: none) */
};

/* A bgs_tables inner map: an array of __u32. Entry 0 holds the table size M (a prime, or the
 * set's count for `--lb modulo`), entries 1 to M the backend slot of each position; a new flow
 * takes position flow hash % M.
 */
#define BGS_TABLE_HDR 1

enum bgs_lb {
	BGS_LB_MAGLEV = 0, /* Maglev lookup table per color (default) */
	BGS_LB_MODULO = 1, /* flow hash modulo the set's count: no table, weights all equal */
};

enum bgs_backend_state {
	BGS_BACKEND_FREE = 0,
	BGS_BACKEND_ACTIVE = 1, /* in its color's set: takes new flows */
	BGS_BACKEND_DRAINING = 2, /* removed from the set; existing flows still go there */
};

/* A packet's 5-tuple as it is on the wire (saddr and sport are the sender's): what the flow hash
 * is taken over and what fragments and ICMP errors are matched by.
 */
struct bgs_flow_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* bgs_flows key: one connection, found from both directions. The client's address and port and
 * the service id stand for the whole client-to-VIP 5-tuple (the service is one VIP, port,
 * protocol and family); a reply (backend to client) finds it from its destination and the
 * services its source serves (bgs_backend_addrs). 24 bytes.
 */
struct bgs_conn_key {
	__u32 caddr[4]; /* client address */
	__u16 cport; /* client port, network byte order */
	__u16 svc;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* bgs_flows value: where a connection goes, 16 bytes. The backend's address and port are its
 * slot's (bgs_backends); a reply is the flow's only if it comes from them, and in by ifindex.
 */
struct bgs_flow {
	__u16 slot; /* backend identity: address, port, color, counters, drain */
	__u8 color;
	__u8 pad;
	__u32 state; /* BGS_FLOW_* bits, set atomically by either direction */
	__u32 ifindex; /* where the backend's packets come in: its next hop's interface, 0: local */
	__u32 seen; /* the client's last packet: bpf_ktime_get_coarse_ns() >> BGS_SEEN_SHIFT */
};

#define BGS_FLOW_SYN 0x01 /* opened by a SYN (TCP) */
#define BGS_FLOW_FIN_CLIENT 0x02 /* client sent FIN */
#define BGS_FLOW_FIN_SERVER 0x04 /* backend sent FIN */
#define BGS_FLOW_RST 0x08 /* either side sent RST: not live, unless both sides go on */
#define BGS_FLOW_CLIENT_ON 0x10 /* client sent a segment without RST after the RST */
#define BGS_FLOW_SERVER_ON 0x20 /* backend sent a segment without RST after the RST */
#define BGS_FLOW_RST_SERVER 0x40 /* the RST came from the backend: the flow is over */
#define BGS_FLOW_BOTH_FIN (BGS_FLOW_FIN_CLIENT | BGS_FLOW_FIN_SERVER)
#define BGS_FLOW_BOTH_ON (BGS_FLOW_CLIENT_ON | BGS_FLOW_SERVER_ON)

/* bgs_nexthops value (per CPU), indexed by slot: the fast path's route to a backend, looked up
 * with bpf_fib_lookup() by the first packet that needs it and again BGS_NEXTHOP_NS later.
 */
struct bgs_nexthop {
	__u64 expires; /* bpf_ktime_get_ns() after which it is looked up again */
	__u32 ifindex; /* egress interface (also on NO_NEIGH and FRAG_NEEDED) */
	__u16 mtu; /* that interface's MTU: a longer packet takes the kernel's path */
	__u8 dmac[6];
	__u8 smac[6];
	__u8 rc; /* BPF_FIB_LKUP_RET_* of the lookup */
	__u8 pad;
};

/* bgs_backend_addrs key: a backend address the egress program must look at. */
struct bgs_backend_addr {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

/* bgs_backend_addrs value: the services a backend address and port serves, where a reply from
 * it looks for its flow (one bgs_flows lookup each).
 */
struct bgs_backend_ref {
	__u32 refs; /* slots with this address */
	__u32 nsvc; /* services in svc[], at most BGS_ADDR_SVCS */
	__u16 svc[BGS_ADDR_SVCS];
};

/* bgs_vip_addrs key: an address some service listens on (for fragments, which carry no port). */
struct bgs_vip_addr {
	__u32 addr[4];
	__u8 family;
	__u8 pad[3];
};

/* bgs_frags key: one fragmented datagram, as its later fragments identify it. */
struct bgs_frag_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 id; /* IPv4 identification, or the IPv6 fragment header's */
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* bgs_frags value: the address that replaces the destination (ingress) or source (egress). */
struct bgs_frag {
	__u32 addr[4];
	__u32 slot;
};

/* bgs_frag.slot of a pass marker: the first fragment went to a VIP address but to no service
 * (another port, or an ICMP message other than an error about a flow), so the fragments that
 * follow it pass untouched too (addr is zero).
 */
#define BGS_FRAG_PASS 0xffffffff

/* bgs_socks value (socket storage): the backend a local client's socket was given by the
 * cgroup hooks at connect() or its first sendmsg(), so that it stays there, its replies and
 * getpeername() show the VIP, and its backend's live count falls when the socket goes away.
 */
struct bgs_sock {
	__u32 vip[4]; /* the address the application asked for */
	__u32 be[4]; /* where its packets go instead */
	__u16 vip_port; /* network byte order */
	__u16 be_port;
	__u16 slot; /* the backend's identity: counted in bgs_local_counts[slot] */
	__u8 color;
	__u8 family;
	__u32 svc;
	__u32 flags; /* BGS_SOCK_* */
};

/* bgs_local_counts value, indexed by slot: the local clients' sockets of a backend. */
struct bgs_local_count {
	__u64 live; /* open sockets: counted at connect, uncounted when released */
	__u64 opened; /* sockets ever given this backend: its local new flows */
};

#define BGS_SOCK_COUNTED 0x1 /* counted in bgs_local_counts[slot] until the socket is released */

#ifndef BGS_MAX_LOCAL_NETNS
#define BGS_MAX_LOCAL_NETNS 256 /* network namespaces whose sockets the hooks serve */
#endif

/* bgs_services value, indexed by service id: the control plane's record of a service. */
struct bgs_service {
	char name[BGS_NAME_LEN];
	struct bgs_vip_key vip;
	__u32 table_size; /* Maglev table size M (a prime), or 0 with BGS_LB_MODULO */
	__u8 lb; /* enum bgs_lb */
	__u8 pad[3];
	__u32 vip_flags; /* BGS_VIP_*, as in the service's bgs_vips entry */
};

/* bgs_config value (one entry): run-time settings read by the data plane. */
struct bgs_config {
	__u32 layout_version; /* BGS_LAYOUT_VERSION of the build that created the maps */
	__u32 flow_entries;
	__u64 tcp_idle_ns;
	__u64 udp_idle_ns;
	__u64 closing_ns;
	__u32 new_flow_rate; /* flow-table inserts per second, each CPU's part; 0: no limit */
	__u32 new_flow_burst; /* inserts a CPU may make at once above the rate, its part */
	__u64 collected; /* flow entries deleted by user space (gc, cuts), for evictions */
	__u32 node_flow_rate; /* the node's insert limit as set (`bgswitch limits`) */
	__u32 node_flow_burst;
};

/* bgs_ifaces value, keyed by ifindex: where this pinned state is attached. */
struct bgs_iface {
	char name[BGS_IFNAME_LEN];
	__u32 xdp_prog_id;
	__u32 tc_prog_id;
	__u32 xdp_flags; /* XDP_FLAGS_* used at attach */
	__u32 pad;
};

/* bgs_backend_stats value (per CPU), indexed by slot. */
struct bgs_backend_stats {
	__u64 rx_packets; /* client to backend */
	__u64 rx_bytes;
	__u64 tx_packets; /* backend to client */
	__u64 tx_bytes;
	__u64 new_flows;
	__u64 resets; /* RST sent by the backend */
};

/* bgs_stats index (per CPU): node-wide counters, in index order. Each is
 * X(ID, name, passed, help): BGS_STAT_ID in enum bgs_stat, the name user space shows (`status`,
 * `watch`, the exporter's reason labels and tests/lib/model.py read this list), passed 1 when
 * the packet it counts is passed untouched, and what it counts.
 */
#define BGS_STATS(X)                                                                               \
	X(RX, rx, 0, "packets seen by the ingress program")                                        \
	X(NOT_VIP, not_vip, 1, "not addressed to a service")                                       \
	X(NOT_IP, not_ip, 1, "neither IPv4 nor IPv6")                                              \
	X(PARSE_L2, parse_l2, 1, "truncated Ethernet or VLAN header")                              \
	X(PARSE_IP_HDR, parse_ip_header, 1, "truncated IP header, bad version or IHL")             \
	X(PARSE_IP_LEN, parse_ip_length, 1, "IP length longer than the frame, or short")           \
	X(PARSE_L4, parse_l4, 1, "truncated TCP/UDP header, bad offset/length")                    \
	X(ZERO_PORT, zero_port, 1, "source or destination port 0")                                 \
	X(EXTHDR_LIMIT, ipv6_exthdr_limit, 1, "IPv6 extension chain longer than the bound")        \
	X(FRAG_FIRST, frag_first, 0, "first fragment of a VIP flow: steered and tracked")          \
	X(FRAG_LATER, frag_later, 0, "later fragment that followed its tracked first fragment")    \
	X(VIP, vip, 0, "addressed to a service")                                                   \
	X(FLOW_HIT, flow_hit, 0, "followed an existing flow entry")                                \
	X(FLOW_NEW, flow_new, 0, "created a flow entry")                                           \
	X(FLOW_REOPEN, flow_reopen, 0,                                                             \
	  "SYN on a closed or idle entry: new flow on the active color")                           \
	X(SYN_MISS, syn_miss, 0, "SYN that missed the table (a new TCP flow)")                     \
	X(NOSYN_MISS, nosyn_miss, 0, "non-SYN TCP segment that missed the table (re-pinned)")      \
	X(SECOND_CHANCE, second_chance, 0,                                                         \
	  "non-SYN miss re-pinned: by the previous share while it drains")                         \
	X(TX, tx, 0, "packets seen by the egress program")                                         \
	X(REPLY_NAT, reply_nat, 0, "replies whose source was rewritten to the VIP")                \
	X(REPLY_NO_FLOW, reply_no_flow, 0,                                                         \
	  "from a backend address, but no live flow of it: untouched")                             \
	X(REPLY_WRONG_DEV, reply_wrong_dev, 0,                                                     \
	  "a flow's reply that came in from elsewhere than its backend")                           \
	X(ICMP_IN, icmp_in, 0, "ICMP error about a reply, translated toward its backend")          \
	X(ICMP_OUT, icmp_out, 0, "ICMP error about a client packet, translated toward the client") \
	X(ICMP_NO_FLOW, icmp_no_flow, 0,                                                           \
	  "ICMP error quoting a VIP or backend but no flow: untouched")                            \
	X(FWD_TX, fwd_tx, 0, "fast path: sent back out of the ingress interface (XDP_TX)")         \
	X(FWD_REDIRECT, fwd_redirect, 0, "fast path: redirected to a registered egress interface") \
	X(FWD_NO_NEIGH, fwd_no_neigh, 0,                                                           \
	  "passed to the stack: the next hop's neighbour is unresolved")                           \
	X(FWD_STACK, fwd_stack, 0,                                                                 \
	  "passed to the stack: no route, not registered, tagged, or TTL")                         \
	X(UNTRACKED, untracked, 0, "new flow over the insert limit: forwarded, no entry written")  \
	X(REPLY_SUPERSEDED, reply_superseded, 0,                                                   \
	  "backend SYN on a closed flow: a new connection, entry deleted")                         \
	X(RST_MISS, rst_miss, 0, "RST that missed the table: forwarded, no entry written")         \
	X(FRAG_PASS, frag_pass, 1, "later fragment of a datagram to no service")

#define BGS_STAT_ENUM(id, name, passed, help) BGS_STAT_##id,
enum bgs_stat {
	BGS_STATS(BGS_STAT_ENUM) /* BGS_STAT_RX = 0, BGS_STAT_NOT_VIP, ... */
	BGS_STAT_MAX,
};

/* bgs_drops index (per CPU): why the data plane dropped a packet, in index order. Each is
 * X(ID, name, help): BGS_DROP_ID in enum bgs_drop_reason, the name user space shows, and when.
 */
#define BGS_DROP_REASONS(X)                                                            \
	X(NO_BACKEND, no_backend, "the active color of the service has no backend")    \
	X(BAD_BACKEND, bad_backend, "a set names a slot that is not a usable backend") \
	X(FLOW_INSERT, flow_insert, "the flow table refused the new entry")            \
	X(FRAG_MISS, frag_miss, "later fragment to a VIP whose first fragment was not seen")

#define BGS_DROP_ENUM(id, name, help) BGS_DROP_##id,
enum bgs_drop_reason {
	BGS_DROP_REASONS(BGS_DROP_ENUM) /* BGS_DROP_NO_BACKEND = 0, ... */
	BGS_DROP_MAX,
};

/* bgs_service_stats value (per CPU), indexed by service id: what happened to new flows. */
struct bgs_service_stats {
	__u64 syn_miss; /* SYN that missed the table: a new TCP flow */
	__u64 nosyn_miss; /* TCP segment without SYN that missed the table (re-pinned) */
	__u64 reopen; /* SYN on a closed or idle entry: a new flow on the active color */
	__u64 second_chance; /* non-SYN miss re-pinned (by the previous share while it drains) */
	__u64 drops[BGS_DROP_MAX]; /* by enum bgs_drop_reason */
};

#endif /* BGSWITCH_H */
