/* SPDX-License-Identifier: GPL-2.0 */
/* fleet.h: a fleet of nodes driven through etcd: the desired state of a service (one JSON
 * document per service under <prefix>/services/), the nodes' reports (<prefix>/nodes/, with a
 * lease), and the fleet forms of the change commands and of status.
 */
#ifndef BGS_FLEET_H
#define BGS_FLEET_H

#include <stdbool.h>
#include <linux/types.h>
#include "bgswitch.h"
#include "etcd.h"
#include "util.h"

#define FLEET_DEFAULT_PREFIX "/bgswitch"
#define FLEET_SHARE_MAX 10000 /* green_share: 0.01% units; 0 all blue, 10000 all green */
#define FLEET_PREFIX_LEN 128
#define FLEET_NODE_LEN 64
#define FLEET_WHY_LEN 256 /* why a document is not valid: one line */
#define FLEET_WAIT_DEFAULT_NS (30 * 1000000000ULL) /* --wait's --timeout */
#define FLEET_KEY_NAME_LEN 128 /* a key's name the agent reports a refusal under (cut) */

struct fleet_backend {
	char addr[BGS_ADDRSTR_LEN]; /* as written: "10.0.1.1:8080", "[fd00::1]:8080" */
	__u32 weight;
};

/* A service's desired state, as one etcd document. */
struct fleet_service {
	char name[BGS_NAME_LEN];
	char vip[BGS_ADDRSTR_LEN];
	struct bgs_endpoint vip_ep; /* vip, parsed */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__s64 generation;
	__s32 green_share;
	__s32 previous_share; /* before the last flip, or -1 */
	__u8 lb; /* enum bgs_lb */
	__u32 table_size; /* Maglev table size (0 with BGS_LB_MODULO) */
	__u32 vip_flags; /* BGS_VIP_SPLIT_CLIENT: split by client */
	__u32 nbe[BGS_NCOLORS];
	struct fleet_backend be[BGS_NCOLORS][BGS_MAX_BACKENDS];
	/* etcd's view of the document, not part of it */
	__s64 mod_rev;
};

/* The connection options every fleet command and the agent share. */
struct fleet_conn {
	struct etcd_opts eo;
	const char *prefix;
};

int fleet_check_prefix(const char *prefix);
int fleet_check_node(const char *node);
void fleet_key(char *buf, size_t len, const char *prefix, const char *kind, const char *name);

int fleet_doc_decode(const char *json, size_t len, const char *key_name, struct fleet_service *s,
		     char *why, size_t why_len);
char *fleet_doc_encode(const struct fleet_service *s);
int fleet_doc_encode_checked(const struct fleet_service *s, char **out, char *why, size_t why_len);
__u64 fleet_now_us(void);

struct bgs_change;
/* A flip, shift or rollback (ch->kind) written to the fleet: the next document of the service,
 * if at ch->if_generation, with one conditional transaction; then ch->wait.
 */
int fleet_switch(const struct bgs_change *ch);
/* The documents of name (NULL: every service) and what every node reports of them. */
int fleet_status(const struct fleet_conn *conn, const char *name, bool json, bool wait,
		 __u64 timeout_ns);
int fleet_service(const struct bgs_change *ch);
int fleet_backend(const struct bgs_change *ch);

#endif /* BGS_FLEET_H */
