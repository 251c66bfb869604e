/* SPDX-License-Identifier: GPL-2.0 */
/* etcd.h: a small client of etcd's v3 JSON gateway (HTTP + JSON, libcurl and json-c): range, put,
 * conditional transactions, leases and a streaming watch, over several endpoints with failover.
 */
#ifndef BGS_ETCD_H
#define BGS_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <linux/types.h>
#include <json-c/json.h>

#define ETCD_MAX_ENDPOINTS 8

struct etcd_opts {
	const char *endpoints; /* "URL[,URL...]" */
	const char *cacert;
	const char *cert;
	const char *key;
	bool insecure; /* allow plain http:// to a non-loopback address */
};

struct etcd {
	char *url[ETCD_MAX_ENDPOINTS];
	int nurl;
	int cur; /* endpoint in use; moves on at a transport error */
	struct etcd_opts o;
	void *curl; /* CURL *, for the unary calls */
	long timeout_ms;
	char last_error[800]; /* why the last call reached no endpoint */
};

struct etcd_kv {
	char *key;
	char *value; /* NUL-terminated */
	size_t vlen;
	__s64 create_rev;
	__s64 mod_rev;
};

struct etcd_watch {
	void *multi; /* CURLM * */
	void *easy; /* CURL * */
	char *body; /* the request, alive while the transfer runs */
	char *buf; /* bytes received and not parsed yet */
	size_t len, cap;
	bool done; /* the stream ended (error or close) */
	int result; /* CURLcode when done */
};

/* Watch callback: one message of the stream (its "result" object). Non-zero stops the poll
 * and is returned by etcd_watch_poll().
 */
typedef int (*etcd_watch_cb)(json_object *result, void *ctx);

int etcd_open(struct etcd *e, const struct etcd_opts *o);
void etcd_close(struct etcd *e);
const char *etcd_endpoint(const struct etcd *e);

int etcd_call(struct etcd *e, const char *path, json_object *req, json_object **resp);
int etcd_range(struct etcd *e, const char *key, bool prefix, struct etcd_kv **kvs, size_t *n,
	       __s64 *rev);
void etcd_kvs_free(struct etcd_kv *kvs, size_t n);
int etcd_put(struct etcd *e, const char *key, const char *value, __s64 lease);
int etcd_txn_put(struct etcd *e, const char *key, const char *value, __s64 mod_rev, bool *ok,
		 __s64 *rev);
int etcd_txn_delete(struct etcd *e, const char *key, __s64 mod_rev, bool *ok, __s64 *rev);
int etcd_lease_grant(struct etcd *e, __s64 ttl, __s64 *id);
int etcd_lease_keepalive(struct etcd *e, __s64 id, __s64 *ttl);
int etcd_lease_revoke(struct etcd *e, __s64 id);

int etcd_watch_start(struct etcd *e, struct etcd_watch *w, const char *prefix, __s64 start_rev);
int etcd_watch_poll(struct etcd_watch *w, int timeout_ms, etcd_watch_cb cb, void *ctx);
void etcd_watch_stop(struct etcd_watch *w);

char *etcd_b64_encode(const void *data, size_t len);
int etcd_b64_decode(const char *s, char **out, size_t *len);
__s64 etcd_json_int(json_object *o, const char *field);
char *etcd_prefix_end(const char *prefix);

#endif /* BGS_ETCD_H */
