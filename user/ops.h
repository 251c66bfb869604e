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
#include "probe.h"
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

/* What a switch checks before it writes. */
struct bgs_switch_opts {
	const struct bgs_check_opts *chk; /* probes of the color that gains; NULL: none */
	bool force; /* go ahead although a probe failed (the audit detail says so) */
};

/* Set the green share of service svc (0 to BGS_SHARE_ALL), under the state lock: the ONE place
 * that writes the transition (prev_share = share, share, DRAINING | HAS_PREV, generation + 1).
 * With o, the color that gains must have a backend of weight above 0 and pass o->chk's probes
 * (BGS_ERR_CHECK unless o->force); without o the share is written as told (the agent, a
 * rollback). au, if not NULL, gets from, to and the generations, and its record once written.
 * *changed is false when the share was already that (nothing written, nothing for the trail).
 */
int bgs_switch_set(struct bgs_state *st, __u32 svc, __u32 share, const struct bgs_switch_opts *o,
		   struct bgs_audit *au, bool *changed);

/* "blue", "green" or "green 12.5%": a share as messages and the audit trail name it. */
const char *bgs_share_desc(__u32 share, char *buf, size_t len);

/* The probes of every backend of weight above 0 of one color: *p (free() it) holds *n results. */
int bgs_check_color(const struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
		    __u8 color, const struct bgs_check_opts *chk, struct bgs_probe **p, __u32 *n);
/* "ADDR (why), ...": the failures of n probes into buf; returns how many failed. */
__u32 bgs_check_failures(const struct bgs_probe *p, __u32 n, char *buf, size_t len);
/* The checks before a switch to color: every backend of weight above 0 must pass its probe
 * (BGS_ERR_CHECK), unless force (then au's detail says so). UDP services are not probed.
 */
int bgs_switch_checks(const struct bgs_state *st, __u32 svc, const struct bgs_service *rec,
		      __u8 color, const struct bgs_check_opts *chk, bool force,
		      struct bgs_audit *au);

/* Guard defaults (bgswitch(8), flip). */
#define BGS_GUARD_MAX_RESETS 10
#define BGS_GUARD_MAX_RESET_RATIO 0.1
#define BGS_GUARD_MIN_NEW_FLOWS 1
#define BGS_GUARD_MAX_SILENT 0

struct bgs_guard_opts {
	__u64 duration_ns; /* 0: no guard */
	__u64 max_resets;
	double max_reset_ratio;
	__u64 min_new_flows;
	__u32 max_silent;
};

/* Watch the backends of color for g->duration_ns after a change that sent it new flows (made at
 * generation gen), and roll back to share back when they send resets, stay silent or get no new
 * flow: BGS_ERR_GUARD once rolled back, BGS_ERR_GENERATION when someone else changed the
 * service. Progress lines through pr_info. Takes the state lock only to roll back.
 */
int bgs_guard_run(struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u8 color,
		  __u32 back, __u32 gen, const struct bgs_guard_opts *g, const char *reason);
/* Roll svc back to share back, under the lock, if it is still at generation gen; why goes to
 * the audit detail. BGS_ERR_GUARD once rolled back.
 */
int bgs_guard_rollback(struct bgs_state *st, __u32 svc, const struct bgs_service *rec, __u32 back,
		       __u32 gen, const char *why, const char *reason);

/* Wait until color of svc has no live flow (progress every interval_ns through pr_info):
 * BGS_ERR_TIMEOUT after timeout_ns, -EBUSY when the color takes new flows again.
 */
int bgs_drain_wait(const struct bgs_state *st, __u32 svc, const char *name, __u8 color,
		   __u64 timeout_ns, __u64 interval_ns);

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
	/* BGS_CH_FLIP: the color that gets every new flow; BGS_COLOR_NONE: the other one */
	__u8 flip_to;
	/* BGS_CH_SHIFT: shift_color gets shift_pct (0.01 % units) of new flows, the other the rest */
	__u8 shift_color;
	__u32 shift_pct;
	/* BGS_CH_ROLLBACK: back to the share before the last change (no field) */
	/* services and backends */
	struct bgs_service_spec svc;
	struct bgs_backend_spec be;
	char addr_text[BGS_ADDRSTR_LEN]; /* the VIP or the backend as given (fleet documents) */
};

/* The green share a flip, shift or rollback of ch asks for, from the service's share now (cur)
 * and the one before its last change (prev, when has_prev): the same meaning locally and in the
 * fleet (where: "" or " in the fleet", for the messages). -EINVAL (a flip without a color of a
 * split service) or -ENOENT (nothing to roll back), after a pr_warn unless quiet.
 */
int bgs_change_share(const struct bgs_change *ch, const char *name, __u32 cur, bool has_prev,
		     __u32 prev, const char *where, bool quiet, __u32 *share);

/* Apply ch to the local state (st opened and locked by the caller): the operation of its kind,
 * with its reason and if_generation.
 */
int bgs_change_apply(struct bgs_state *st, const struct bgs_change *ch, struct bgs_op *op);

#endif /* BGS_OPS_H */
