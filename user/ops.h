/* SPDX-License-Identifier: GPL-2.0 */
/* ops.h: typed operations on the pinned state (services, backends, the switch), and struct
 * bgs_change: one parsed change, applied locally or written as a fleet document. Commands, the
 * agent, the exporter and the fleet code call these; they print nothing on stdout and report
 * errors as -errno after one pr_warn line.
 */
#ifndef BGS_OPS_H
#define BGS_OPS_H

#include <stdbool.h>
#include <linux/types.h>
#include "audit.h"
#include "bgswitch.h"
#include "fleet.h"
#include "state.h"
#include "util.h"

/* ==== services and backends (owner: branch ops-service) ==== */

/* A service as `service add` defines it, or what `service set` changes (set_table, set_split). */
struct bgs_service_spec {
	char name[BGS_NAME_LEN];
	struct bgs_endpoint vip;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 lb; /* enum bgs_lb */
	__u32 table_size; /* Maglev table size (ignored with BGS_LB_MODULO) */
	__u32 vip_flags; /* BGS_VIP_SPLIT_CLIENT: a split goes by the client's address */
	bool set_table; /* service set: change table_size */
	bool set_split; /* service set: change vip_flags */
	bool force; /* service del: although flows are live (they are cut) */
};

/* One backend of one color of a service. */
struct bgs_backend_spec {
	char service[BGS_NAME_LEN];
	__u8 color;
	struct bgs_endpoint ep;
	int weight; /* add: 0 to BGS_WEIGHT_MAX, -1: 1 (on a backend there already: none given) */
	bool drain; /* del: its live flows finish */
	bool force; /* del: its live flows are cut */
};

/* What an operation did, for the caller's message. */
enum bgs_done {
	BGS_DONE_NOTHING, /* already so: nothing changed */
	BGS_DONE_ADDED,
	BGS_DONE_REWEIGHED,
	BGS_DONE_REMOVED, /* live: the flows cut (0: none were live) */
	BGS_DONE_DRAINING, /* out of the set; live flows drain to it */
	BGS_DONE_OUT_OF_SET, /* del of a backend out of the set already: live flows drain to it */
	BGS_DONE_FINISHED, /* an interrupted add or delete finished */
};

#define BGS_DID_TABLE 0x1 /* service set: the table size changed */
#define BGS_DID_SPLIT 0x2 /* service set: what a split goes by changed */

/* One operation's context: what the caller says (reason, if_generation), and what it tells back
 * (done and its figures, or error: the first warning of a failed operation, as one line).
 */
struct bgs_op {
	const char *reason; /* for the audit trail, or NULL */
	__s64 if_generation; /* -1: any */
	enum bgs_done done;
	unsigned int did; /* BGS_DID_* (service set) */
	__u32 generation; /* the service's local generation afterwards */
	__u64 live; /* live flows cut, or left to drain */
	__u32 count; /* backends of the color afterwards */
	char error[256];
};

/* st: opened and locked by the caller (state_open(st, true), or state_lock()). Each writes one
 * audit record, as the command of the same name always has.
 */
int bgs_service_add(struct bgs_state *st, const struct bgs_service_spec *spec, struct bgs_op *op);
int bgs_service_set(struct bgs_state *st, const struct bgs_service_spec *spec, struct bgs_op *op);
int bgs_service_del(struct bgs_state *st, const struct bgs_service_spec *spec, struct bgs_op *op);
int bgs_backend_set(struct bgs_state *st, const struct bgs_backend_spec *spec, struct bgs_op *op);
int bgs_backend_del(struct bgs_state *st, const struct bgs_backend_spec *spec, struct bgs_op *op);

/* Reading, without a lock. */
bool bgs_service_visible(const struct bgs_state *st, const char *name, __u32 *svc,
			 struct bgs_service *rec);
bool bgs_vip_owner(const struct bgs_state *st, const struct bgs_vip_key *key, __u32 *svc);
int bgs_backends_read(const struct bgs_state *st, __u32 svc, __u8 color,
		      struct bgs_backend_spec *out, __u32 *n);

/* ==== the switch (owner: branch ops-switch) ==== */

/* e.g.
 * int bgs_switch_set(struct bgs_state *st, __u32 svc, __u32 share,
 *		      const struct bgs_switch_opts *o, struct bgs_audit *au, bool *changed);
 * the ONE place that writes the transition (prev_share, DRAINING|HAS_PREV, generation++).
 */

/* ==== one change, parsed once (both branches) ==== */

enum bgs_change_kind {
	BGS_CH_FLIP,
	BGS_CH_SHIFT,
	BGS_CH_ROLLBACK,
	BGS_CH_SERVICE_ADD,
	BGS_CH_SERVICE_SET,
	BGS_CH_SERVICE_DEL,
	BGS_CH_BACKEND_ADD,
	BGS_CH_BACKEND_DEL,
	BGS_CH_SERVICE_LIST, /* not a change: parsed like one, for its fleet form */
};

struct bgs_change {
	enum bgs_change_kind kind;
	char service[BGS_NAME_LEN];
	__s64 if_generation; /* -1: any */
	const char *reason; /* --reason, or NULL */
	/* the fleet form (--etcd): written as a document for the agents */
	bool fleet;
	struct fleet_conn conn;
	bool wait;
	__u64 timeout_ns;
	const char *name; /* NAME as given, or NULL: a fleet document's key may be longer */
	bool help; /* --help was given (and its usage printed): change nothing */
	/* services and backends */
	struct bgs_service_spec svc;
	struct bgs_backend_spec be;
	char addr_text[BGS_ADDRSTR_LEN]; /* the VIP or the backend as given (fleet documents) */
};

/* Apply ch to the local state (st opened and locked by the caller): the operation of its kind,
 * with its reason and if_generation.
 */
int bgs_change_apply(struct bgs_state *st, const struct bgs_change *ch, struct bgs_op *op);

#endif /* BGS_OPS_H */
