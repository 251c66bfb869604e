// SPDX-License-Identifier: GPL-2.0
/* etcd.c: a small client of etcd's v3 JSON gateway (etcd 3.4: /v3/kv/..., /v3/lease/...,
 * /v3/watch). Keys and values travel base64-encoded, 64-bit integers as JSON strings. A
 * transport error moves on to the next endpoint; an HTTP error is the server's answer and is
 * not retried elsewhere.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <curl/curl.h>

#include "dl.h"
#include "etcd.h"
#include "log.h"

#define CURL_SONAME "libcurl.so.4"

/* libcurl is loaded when a fleet command or the agent first talks to etcd, not linked: with its
 * TLS, LDAP, Kerberos, SSH and HTTP/2 libraries it would double the start-up time of every
 * bgswitch command (a flip included).
 */
static struct {
	CURLcode (*global_init)(long flags);
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *h, CURLoption opt, ...);
	CURLcode (*easy_getinfo)(CURL *h, CURLINFO info, ...);
	void (*easy_cleanup)(CURL *h);
	void (*easy_reset)(CURL *h);
	CURLcode (*easy_perform)(CURL *h);
	const char *(*easy_strerror)(CURLcode rc);
	struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
	CURLM *(*multi_init)(void);
	CURLMcode (*multi_add_handle)(CURLM *m, CURL *h);
	CURLMcode (*multi_remove_handle)(CURLM *m, CURL *h);
	CURLMcode (*multi_perform)(CURLM *m, int *running);
	CURLMcode (*multi_poll)(CURLM *m, struct curl_waitfd *fds, unsigned int n, int ms,
				int *ret);
	CURLMsg *(*multi_info_read)(CURLM *m, int *left);
	CURLMcode (*multi_cleanup)(CURLM *m);
} cu;

static int curl_load(void)
{
	static const char *const names[] = {
		"curl_global_init",   "curl_easy_init",	       "curl_easy_setopt",
		"curl_easy_getinfo",  "curl_easy_cleanup",     "curl_easy_reset",
		"curl_easy_perform",  "curl_easy_strerror",    "curl_slist_append",
		"curl_multi_init",    "curl_multi_add_handle", "curl_multi_remove_handle",
		"curl_multi_perform", "curl_multi_poll",       "curl_multi_info_read",
		"curl_multi_cleanup",
	};
	static void *lib;

	if (lib)
		return 0;
	if (dl_load(CURL_SONAME, "libcurl", names, sizeof(names) / sizeof(names[0]), (void **)&cu,
		    &lib))
		return -ENOENT;
	return cu.global_init(CURL_GLOBAL_DEFAULT) ? -EIO : 0;
}

#define CALL_TIMEOUT_MS 2000
#define CONNECT_TIMEOUT_MS 500
#define MAX_RESPONSE (64 << 20)

struct buf {
	char *p;
	size_t len, cap;
};

static int buf_add(struct buf *b, const char *data, size_t n)
{
	size_t cap;
	char *p;

	if (b->len + n + 1 > b->cap) {
		cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		if (cap > MAX_RESPONSE)
			return -E2BIG;
		p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *ctx)
{
	return buf_add(ctx, data, size * nmemb) ? 0 : size * nmemb;
}

/* ---- base64 ---- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *etcd_b64_encode(const void *data, size_t len)
{
	const unsigned char *s = data;
	char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
	size_t i;

	if (!out)
		return NULL;
	for (i = 0; i + 2 < len; i += 3) {
		*o++ = b64[s[i] >> 2];
		*o++ = b64[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
		*o++ = b64[((s[i + 1] & 15) << 2) | (s[i + 2] >> 6)];
		*o++ = b64[s[i + 2] & 63];
	}
	if (i < len) {
		*o++ = b64[s[i] >> 2];
		if (i + 1 < len) {
			*o++ = b64[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
			*o++ = b64[(s[i + 1] & 15) << 2];
		} else {
			*o++ = b64[(s[i] & 3) << 4];
			*o++ = '=';
		}
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

static int b64_val(char c)
{
	const char *p = c ? strchr(b64, c) : NULL;

	return p ? (int)(p - b64) : -1;
}

int etcd_b64_decode(const char *s, char **out, size_t *len)
{
	size_t n = strlen(s), i, o = 0;
	unsigned int acc = 0;
	int bits = 0, v;
	char *p;

	p = malloc(n / 4 * 3 + 4);
	if (!p)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		if (s[i] == '=')
			break;
		v = b64_val(s[i]);
		if (v < 0) {
			free(p);
			return -EINVAL;
		}
		acc = (acc << 6) | v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			p[o++] = (acc >> bits) & 0xff;
		}
	}
	p[o] = '\0';
	*out = p;
	*len = o;
	return 0;
}

/* ---- helpers ---- */

/* An int64 field, which the gateway sends as a string (and omits when 0). */
__s64 etcd_json_int(json_object *o, const char *field)
{
	json_object *v;

	if (!o || !json_object_object_get_ex(o, field, &v))
		return 0;
	if (json_object_is_type(v, json_type_string))
		return strtoll(json_object_get_string(v), NULL, 10);
	return json_object_get_int64(v);
}

/* The end of a prefix range: the prefix with its last byte plus one. */
char *etcd_prefix_end(const char *prefix)
{
	char *end = strdup(prefix);
	size_t n = strlen(prefix);

	if (end && n)
		end[n - 1]++;
	return end;
}

static void json_add_b64(json_object *o, const char *field, const char *s, size_t len)
{
	char *enc = etcd_b64_encode(s, len);

	json_object_object_add(o, field, json_object_new_string(enc ? enc : ""));
	free(enc);
}

static void json_add_i64s(json_object *o, const char *field, __s64 v)
{
	char num[32];

	snprintf(num, sizeof(num), "%lld", (long long)v);
	json_object_object_add(o, field, json_object_new_string(num));
}

/* A URL is accepted when it is https://, or http:// to a loopback address, or --insecure. */
static int check_url(const char *url, bool insecure)
{
	const char *host, *end;
	char h[256];
	size_t n;

	if (!strncmp(url, "https://", 8))
		return 0;
	if (strncmp(url, "http://", 7)) {
		pr_warn("--etcd '%s': an endpoint is http://HOST:PORT or https://HOST:PORT\n", url);
		return -EINVAL;
	}
	host = url + 7;
	if (*host == '[') {
		end = strchr(host, ']');
		host++;
	} else {
		end = host + strcspn(host, ":/");
	}
	n = end ? (size_t)(end - host) : 0;
	if (!n || n >= sizeof(h)) {
		pr_warn("--etcd '%s': no host\n", url);
		return -EINVAL;
	}
	memcpy(h, host, n);
	h[n] = '\0';
	if (insecure || !strcmp(h, "localhost") || !strcmp(h, "::1") || !strncmp(h, "127.", 4))
		return 0;
	pr_warn("--etcd '%s': refusing plain http:// to a non-loopback address (use https:// with "
		"--cacert, or --insecure)\n",
		url);
	return -EPERM;
}

int etcd_open(struct etcd *e, const struct etcd_opts *o)
{
	char *list = NULL, *tok, *save = NULL;
	int err = 0;

	memset(e, 0, sizeof(*e));
	e->o = *o;
	e->timeout_ms = CALL_TIMEOUT_MS;
	if (!o->endpoints || !o->endpoints[0]) {
		pr_warn("--etcd: no endpoint\n");
		return -EINVAL;
	}
	if ((o->cert && !o->key) || (o->key && !o->cert)) {
		pr_warn("--cert and --key go together\n");
		return -EINVAL;
	}
	err = curl_load();
	if (err)
		return err;
	list = strdup(o->endpoints);
	if (!list)
		return -ENOMEM;
	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		size_t n = strlen(tok);

		while (n && tok[n - 1] == '/')
			tok[--n] = '\0';
		if (e->nurl == ETCD_MAX_ENDPOINTS) {
			pr_warn("--etcd: at most %d endpoints\n", ETCD_MAX_ENDPOINTS);
			err = -EINVAL;
			goto out;
		}
		err = check_url(tok, o->insecure);
		if (err)
			goto out;
		e->url[e->nurl] = strdup(tok);
		if (!e->url[e->nurl]) {
			err = -ENOMEM;
			goto out;
		}
		e->nurl++;
	}
	if (!e->nurl) {
		pr_warn("--etcd: no endpoint\n");
		err = -EINVAL;
		goto out;
	}
	e->curl = cu.easy_init();
	if (!e->curl)
		err = -ENOMEM;
out:
	free(list);
	if (err)
		etcd_close(e);
	return err;
}

void etcd_close(struct etcd *e)
{
	int i;

	for (i = 0; i < e->nurl; i++)
		free(e->url[i]);
	e->nurl = 0;
	if (e->curl)
		cu.easy_cleanup(e->curl);
	e->curl = NULL;
}

const char *etcd_endpoint(const struct etcd *e)
{
	return e->nurl ? e->url[e->cur] : "";
}

static void setup_handle(const struct etcd *e, CURL *h, const char *url, const char *body,
			 struct buf *b)
{
	static struct curl_slist *hdrs;

	if (!hdrs)
		hdrs = cu.slist_append(NULL, "Content-Type: application/json");
	cu.easy_setopt(h, CURLOPT_URL, url);
	cu.easy_setopt(h, CURLOPT_POSTFIELDS, body);
	cu.easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	cu.easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
	cu.easy_setopt(h, CURLOPT_WRITEDATA, b);
	cu.easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	cu.easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
	cu.easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	cu.easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	cu.easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 2L);
	cu.easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 1L);
	cu.easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	if (e->o.cacert)
		cu.easy_setopt(h, CURLOPT_CAINFO, e->o.cacert);
	if (e->o.cert)
		cu.easy_setopt(h, CURLOPT_SSLCERT, e->o.cert);
	if (e->o.key)
		cu.easy_setopt(h, CURLOPT_SSLKEY, e->o.key);
}

/* POST req to path on the first endpoint that answers. *resp: the parsed answer. */
int etcd_call(struct etcd *e, const char *path, json_object *req, json_object **resp)
{
	const char *body = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	struct buf b = { 0 };
	char url[512], ebuf[CURL_ERROR_SIZE];
	long code = 0;
	CURLcode rc = CURLE_OK;
	int i, err = -ENOTCONN;

	*resp = NULL;
	for (i = 0; i < e->nurl; i++) {
		int k = (e->cur + i) % e->nurl;

		b.len = 0;
		snprintf(url, sizeof(url), "%s%s", e->url[k], path);
		cu.easy_reset(e->curl);
		setup_handle(e, e->curl, url, body, &b);
		cu.easy_setopt(e->curl, CURLOPT_TIMEOUT_MS, e->timeout_ms);
		ebuf[0] = '\0';
		cu.easy_setopt(e->curl, CURLOPT_ERRORBUFFER, ebuf);
		rc = cu.easy_perform(e->curl);
		if (rc != CURLE_OK) {
			snprintf(e->last_error, sizeof(e->last_error), "%s: %s", url,
				 ebuf[0] ? ebuf : cu.easy_strerror(rc));
			pr_debug("etcd %s\n", e->last_error);
			continue;
		}
		e->cur = k;
		cu.easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &code);
		*resp = b.p ? json_tokener_parse(b.p) : NULL;
		if (code != 200) {
			json_object *m = NULL;

			if (*resp && !json_object_object_get_ex(*resp, "message", &m))
				json_object_object_get_ex(*resp, "error", &m);
			pr_warn("etcd %s: HTTP %ld: %s\n", url, code,
				m ? json_object_get_string(m) : (b.p ? b.p : ""));
			err = -EPROTO;
			goto out;
		}
		if (!*resp) {
			pr_warn("etcd %s: an answer that is not JSON\n", url);
			err = -EPROTO;
			goto out;
		}
		err = 0;
		goto out;
	}
	pr_debug("etcd: no endpoint answered (%s)\n", cu.easy_strerror(rc));
out:
	if (err && *resp) {
		json_object_put(*resp);
		*resp = NULL;
	}
	free(b.p);
	return err;
}

void etcd_kvs_free(struct etcd_kv *kvs, size_t n)
{
	size_t i;

	for (i = 0; kvs && i < n; i++) {
		free(kvs[i].key);
		free(kvs[i].value);
	}
	free(kvs);
}

static int kv_decode(json_object *jkv, struct etcd_kv *kv)
{
	json_object *v;
	size_t len;
	int err;

	memset(kv, 0, sizeof(*kv));
	if (!json_object_object_get_ex(jkv, "key", &v))
		return -EPROTO;
	err = etcd_b64_decode(json_object_get_string(v), &kv->key, &len);
	if (err)
		return err;
	if (json_object_object_get_ex(jkv, "value", &v))
		err = etcd_b64_decode(json_object_get_string(v), &kv->value, &kv->vlen);
	else
		kv->value = strdup("");
	if (err || !kv->value) {
		free(kv->key);
		return err ? err : -ENOMEM;
	}
	kv->create_rev = etcd_json_int(jkv, "create_revision");
	kv->mod_rev = etcd_json_int(jkv, "mod_revision");
	return 0;
}

int etcd_range(struct etcd *e, const char *key, bool prefix, struct etcd_kv **kvs, size_t *n,
	       __s64 *rev)
{
	json_object *req = json_object_new_object(), *resp = NULL, *arr, *hdr = NULL;
	struct etcd_kv *out = NULL;
	char *end = NULL;
	size_t i, cnt = 0;
	int err;

	*kvs = NULL;
	*n = 0;
	json_add_b64(req, "key", key, strlen(key));
	if (prefix) {
		end = etcd_prefix_end(key);
		if (!end) {
			err = -ENOMEM;
			goto out;
		}
		json_add_b64(req, "range_end", end, strlen(end));
	}
	err = etcd_call(e, "/v3/kv/range", req, &resp);
	if (err)
		goto out;
	json_object_object_get_ex(resp, "header", &hdr);
	if (rev)
		*rev = etcd_json_int(hdr, "revision");
	if (json_object_object_get_ex(resp, "kvs", &arr) &&
	    json_object_is_type(arr, json_type_array)) {
		cnt = json_object_array_length(arr);
		out = calloc(cnt ? cnt : 1, sizeof(*out));
		if (!out) {
			err = -ENOMEM;
			goto out;
		}
		for (i = 0; i < cnt; i++) {
			err = kv_decode(json_object_array_get_idx(arr, i), &out[i]);
			if (err) {
				etcd_kvs_free(out, i);
				out = NULL;
				goto out;
			}
		}
	}
	*kvs = out;
	*n = out ? cnt : 0;
out:
	free(end);
	json_object_put(req);
	json_object_put(resp);
	return err;
}

int etcd_put(struct etcd *e, const char *key, const char *value, __s64 lease)
{
	json_object *req = json_object_new_object(), *resp = NULL;
	int err;

	json_add_b64(req, "key", key, strlen(key));
	json_add_b64(req, "value", value, strlen(value));
	if (lease)
		json_add_i64s(req, "lease", lease);
	err = etcd_call(e, "/v3/kv/put", req, &resp);
	json_object_put(req);
	json_object_put(resp);
	return err;
}

/* One transaction: if key's mod_revision is mod_rev (or, for 0, the key does not exist), do op. */
static int txn(struct etcd *e, const char *key, __s64 mod_rev, json_object *op, bool *ok,
	       __s64 *rev)
{
	json_object *req = json_object_new_object(), *resp = NULL, *cmp = json_object_new_object();
	json_object *cmps = json_object_new_array(), *succ = json_object_new_array(), *v, *hdr;
	int err;

	json_add_b64(cmp, "key", key, strlen(key));
	json_object_object_add(cmp, "result", json_object_new_string("EQUAL"));
	json_object_object_add(cmp, "target", json_object_new_string(mod_rev ? "MOD" : "CREATE"));
	json_add_i64s(cmp, mod_rev ? "mod_revision" : "create_revision", mod_rev);
	json_object_array_add(cmps, cmp);
	json_object_array_add(succ, op);
	json_object_object_add(req, "compare", cmps);
	json_object_object_add(req, "success", succ);
	err = etcd_call(e, "/v3/kv/txn", req, &resp);
	if (err)
		goto out;
	*ok = json_object_object_get_ex(resp, "succeeded", &v) && json_object_get_boolean(v);
	if (rev && json_object_object_get_ex(resp, "header", &hdr))
		*rev = etcd_json_int(hdr, "revision");
out:
	json_object_put(req);
	json_object_put(resp);
	return err;
}

int etcd_txn_put(struct etcd *e, const char *key, const char *value, __s64 mod_rev, bool *ok,
		 __s64 *rev)
{
	json_object *op = json_object_new_object(), *put = json_object_new_object();

	json_add_b64(put, "key", key, strlen(key));
	json_add_b64(put, "value", value, strlen(value));
	json_object_object_add(op, "request_put", put);
	return txn(e, key, mod_rev, op, ok, rev);
}

int etcd_txn_delete(struct etcd *e, const char *key, __s64 mod_rev, bool *ok, __s64 *rev)
{
	json_object *op = json_object_new_object(), *del = json_object_new_object();

	json_add_b64(del, "key", key, strlen(key));
	json_object_object_add(op, "request_delete_range", del);
	return txn(e, key, mod_rev, op, ok, rev);
}

int etcd_lease_grant(struct etcd *e, __s64 ttl, __s64 *id)
{
	json_object *req = json_object_new_object(), *resp = NULL;
	int err;

	json_object_object_add(req, "TTL", json_object_new_int64(ttl));
	err = etcd_call(e, "/v3/lease/grant", req, &resp);
	if (!err) {
		*id = etcd_json_int(resp, "ID");
		if (!*id)
			err = -EPROTO;
	}
	json_object_put(req);
	json_object_put(resp);
	return err;
}

/* One keepalive. *ttl: the lease's TTL now, 0 when it has expired (the gateway omits TTL). */
int etcd_lease_keepalive(struct etcd *e, __s64 id, __s64 *ttl)
{
	json_object *req = json_object_new_object(), *resp = NULL, *res = NULL;
	int err;

	json_add_i64s(req, "ID", id);
	err = etcd_call(e, "/v3/lease/keepalive", req, &resp);
	if (!err) {
		json_object_object_get_ex(resp, "result", &res);
		*ttl = etcd_json_int(res, "TTL");
	}
	json_object_put(req);
	json_object_put(resp);
	return err;
}

int etcd_lease_revoke(struct etcd *e, __s64 id)
{
	json_object *req = json_object_new_object(), *resp = NULL;
	int err;

	json_add_i64s(req, "ID", id);
	err = etcd_call(e, "/v3/lease/revoke", req, &resp);
	json_object_put(req);
	json_object_put(resp);
	return err;
}

/* ---- watch ---- */

static size_t watch_write(char *data, size_t size, size_t nmemb, void *ctx)
{
	struct etcd_watch *w = ctx;
	struct buf b = { w->buf, w->len, w->cap };
	int err = buf_add(&b, data, size * nmemb);

	w->buf = b.p;
	w->len = b.len;
	w->cap = b.cap;
	return err ? 0 : size * nmemb;
}

/* Watch every key under prefix from start_rev on, on the current endpoint (the caller moves
 * on to the next one by calling again after a failure).
 */
int etcd_watch_start(struct etcd *e, struct etcd_watch *w, const char *prefix, __s64 start_rev)
{
	json_object *req = json_object_new_object(), *cr = json_object_new_object();
	struct buf dummy = { 0 };
	char url[512], *end = etcd_prefix_end(prefix);
	int err = 0, running = 0;

	memset(w, 0, sizeof(*w));
	if (!end) {
		err = -ENOMEM;
		goto out;
	}
	json_add_b64(cr, "key", prefix, strlen(prefix));
	json_add_b64(cr, "range_end", end, strlen(end));
	json_add_i64s(cr, "start_revision", start_rev);
	json_object_object_add(req, "create_request", cr);
	w->body = strdup(json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN));
	w->easy = cu.easy_init();
	w->multi = cu.multi_init();
	if (!w->body || !w->easy || !w->multi) {
		err = -ENOMEM;
		goto out;
	}
	snprintf(url, sizeof(url), "%s/v3/watch", e->url[e->cur]);
	setup_handle(e, w->easy, url, w->body, &dummy);
	cu.easy_setopt(w->easy, CURLOPT_WRITEFUNCTION, watch_write);
	cu.easy_setopt(w->easy, CURLOPT_WRITEDATA, w);
	if (cu.multi_add_handle(w->multi, w->easy) != CURLM_OK) {
		err = -ENOMEM;
		goto out;
	}
	/* Start connecting now rather than at the first poll. */
	if (cu.multi_perform(w->multi, &running) != CURLM_OK)
		err = -EIO;
out:
	free(end);
	json_object_put(req);
	if (err)
		etcd_watch_stop(w);
	return err;
}

/* Feed every complete message received so far to cb. */
static int watch_parse(struct etcd_watch *w, etcd_watch_cb cb, void *ctx)
{
	json_tokener *tok = json_tokener_new();
	size_t off = 0;
	int err = 0;

	if (!tok)
		return -ENOMEM;
	while (off < w->len) {
		json_object *msg, *res;
		size_t used;

		while (off < w->len &&
		       (w->buf[off] == '\n' || w->buf[off] == '\r' || w->buf[off] == ' '))
			off++;
		if (off == w->len)
			break;
		json_tokener_reset(tok);
		msg = json_tokener_parse_ex(tok, w->buf + off, w->len - off);
		if (!msg) {
			if (json_tokener_get_error(tok) == json_tokener_continue)
				break; /* the rest has not arrived yet */
			pr_warn("etcd watch: a message that is not JSON\n");
			err = -EPROTO;
			break;
		}
		used = json_tokener_get_parse_end(tok);
		off += used;
		if (json_object_object_get_ex(msg, "result", &res))
			err = cb(res, ctx);
		else if (json_object_object_get_ex(msg, "error", &res))
			err = -EPROTO;
		json_object_put(msg);
		if (err)
			break;
	}
	if (off) {
		memmove(w->buf, w->buf + off, w->len - off);
		w->len -= off;
	}
	json_tokener_free(tok);
	return err;
}

/* Run the watch for at most timeout_ms, calling cb for each message. Returns 0 while the
 * stream is open, -ENOTCONN once it has ended, or cb's non-zero value.
 */
int etcd_watch_poll(struct etcd_watch *w, int timeout_ms, etcd_watch_cb cb, void *ctx)
{
	int running = 0, left, err;
	CURLMsg *m;

	if (w->done)
		return -ENOTCONN;
	if (cu.multi_poll(w->multi, NULL, 0, timeout_ms, NULL) != CURLM_OK)
		return -EIO;
	if (cu.multi_perform(w->multi, &running) != CURLM_OK)
		return -EIO;
	err = watch_parse(w, cb, ctx);
	if (err)
		return err;
	while ((m = cu.multi_info_read(w->multi, &left))) {
		if (m->msg == CURLMSG_DONE) {
			w->done = true;
			w->result = m->data.result;
		}
	}
	if (w->done) {
		long code = 0;

		cu.easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &code);
		pr_debug("etcd watch ended: %s (HTTP %ld)\n", cu.easy_strerror(w->result), code);
		return -ENOTCONN;
	}
	return 0;
}

void etcd_watch_stop(struct etcd_watch *w)
{
	if (w->multi && w->easy)
		cu.multi_remove_handle(w->multi, w->easy);
	if (w->easy)
		cu.easy_cleanup(w->easy);
	if (w->multi)
		cu.multi_cleanup(w->multi);
	free(w->body);
	free(w->buf);
	memset(w, 0, sizeof(*w));
}
