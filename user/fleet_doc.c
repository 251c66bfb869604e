// SPDX-License-Identifier: GPL-2.0
/* fleet_doc.c: a service's desired state as an etcd document: the one validator every reader
 * (the agent, the fleet commands) and every writer (the --etcd commands, before their
 * transaction) goes through, and the encoder.
 *
 * A document is checked completely before anything uses it: one JSON object and nothing after
 * it (no key twice), strict types (an integer is a JSON integer, a string a JSON string, no null but for
 * previous_share), exactly the known keys, and the local commands' own rules through their own
 * check functions (service name, addresses, protocol, lb, table size, split-by, weights,
 * duplicates, a color taking new flows has a backend of weight above 0). The first failure is
 * returned as one line: where in the document, and why.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>

#include "fleet.h"
#include "log.h"
#include "maglev.h"

#define GEN_MAX 0xffffffffLL /* what --if-generation can name */

static const char *const doc_keys[] = { "name",	      "vip",	     "proto",
					"generation", "green_share", "previous_share",
					"lb",	      "table_size",  "split_by",
					"backends",   NULL };
static const char *const color_keys[] = { "blue", "green", NULL };
static const char *const backend_keys[] = { "addr", "weight", NULL };

/* Where in the document a check is: the failure's message says it first. */
struct doc_ctx {
	char at[64];
};

/* A JSON value as the message shows it: its JSON text, cut short. */
static const char *val_text(json_object *v, char *buf, size_t len)
{
	const char *t = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);

	snprintf(buf, len, "%.40s%s", t, strlen(t) > 40 ? "..." : "");
	return buf;
}

/* Only the keys of known[] (each once: json-c keeps the last of duplicates). */
static int only_keys(json_object *o, const char *const *known)
{
	json_object_object_foreach(o, k, v)
	{
		const char *const *p;

		(void)v;
		for (p = known; *p && strcmp(*p, k); p++)
			;
		if (!*p) {
			pr_warn("unknown key \"%.40s\"\n", k);
			return -EINVAL;
		}
	}
	return 0;
}

/* The member key of o, required, of JSON type t. */
static int member(json_object *o, const char *key, enum json_type t, json_object **v,
		  struct doc_ctx *c)
{
	char buf[64];

	snprintf(c->at, sizeof(c->at), "%s", key);
	if (!json_object_object_get_ex(o, key, v)) {
		pr_warn("missing\n");
		return -EINVAL;
	}
	if (!json_object_is_type(*v, t)) {
		pr_warn("%s is not %s\n", val_text(*v, buf, sizeof(buf)),
			t == json_type_string ? "a string" :
			t == json_type_int    ? "an integer" :
			t == json_type_array  ? "an array" :
						"an object");
		return -EINVAL;
	}
	return 0;
}

/* A string member shorter than max, without a NUL inside. */
static int str_member(json_object *o, const char *key, size_t max, const char **out,
		      struct doc_ctx *c)
{
	json_object *v;
	int err = member(o, key, json_type_string, &v, c);

	if (err)
		return err;
	*out = json_object_get_string(v);
	if ((size_t)json_object_get_string_len(v) != strlen(*out) || strlen(*out) >= max) {
		pr_warn("a string of at most %zu characters, without NUL\n", max - 1);
		return -EINVAL;
	}
	return 0;
}

/* An integer member from min to max (not a float, a string or a bool). */
static int int_member(json_object *o, const char *key, __s64 min, __s64 max, __s64 *out,
		      struct doc_ctx *c)
{
	json_object *v;
	char buf[64];

	snprintf(c->at, sizeof(c->at), "%s", key);
	if (!json_object_object_get_ex(o, key, &v)) {
		pr_warn("missing\n");
		return -EINVAL;
	}
	if (json_object_is_type(v, json_type_int)) {
		*out = json_object_get_int64(v);
		if (*out >= min && *out <= max)
			return 0;
	}
	pr_warn("%s is not an integer from %lld to %lld\n", val_text(v, buf, sizeof(buf)),
		(long long)min, (long long)max);
	return -EINVAL;
}

/* name, vip, proto, generation, green_share, previous_share, lb, table_size, split_by. */
static int doc_scalars(json_object *o, const char *key_name, struct fleet_service *s,
		       struct doc_ctx *c)
{
	const char *str;
	json_object *v;
	__s64 n;
	int err;

	err = str_member(o, "name", BGS_NAME_LEN, &str, c);
	if (!err)
		err = check_name(str);
	if (err)
		return -EINVAL;
	snprintf(s->name, sizeof(s->name), "%s", str);
	if (key_name && strcmp(key_name, s->name)) {
		pr_warn("\"%s\" is not the name in its key (\"%.40s\")\n", s->name, key_name);
		return -EINVAL;
	}
	err = str_member(o, "vip", sizeof(s->vip), &str, c);
	if (!err)
		err = parse_endpoint(str, &s->vip_ep);
	if (!err)
		err = check_vip_addr(str, &s->vip_ep);
	if (err)
		return -EINVAL;
	snprintf(s->vip, sizeof(s->vip), "%s", str);
	err = str_member(o, "proto", 32, &str, c);
	if (err || parse_proto(str, &s->proto))
		return -EINVAL;
	if (int_member(o, "generation", 1, GEN_MAX, &s->generation, c) ||
	    int_member(o, "green_share", 0, FLEET_SHARE_MAX, &n, c))
		return -EINVAL;
	s->green_share = n;
	s->previous_share = -1;
	if (json_object_object_get_ex(o, "previous_share", &v) &&
	    json_object_is_type(v, json_type_null)) {
		snprintf(c->at, sizeof(c->at), "previous_share");
	} else if (int_member(o, "previous_share", 0, FLEET_SHARE_MAX, &n, c)) {
		return -EINVAL;
	} else {
		s->previous_share = n;
	}
	err = str_member(o, "lb", 32, &str, c);
	if (err || parse_lb(str, &s->lb))
		return -EINVAL;
	if (int_member(o, "table_size", 0, 0xffffffffLL, &n, c))
		return -EINVAL;
	s->table_size = n;
	if (s->lb == BGS_LB_MODULO ? s->table_size != 0 : !maglev_size_ok(s->table_size)) {
		if (s->lb == BGS_LB_MODULO)
			pr_warn("%u: a service with lb modulo has no table (0)\n", s->table_size);
		else
			pr_warn("%u is not a prime from %d to %d\n", s->table_size, BGS_TABLE_MIN,
				BGS_TABLE_MAX);
		return -EINVAL;
	}
	err = str_member(o, "split_by", 32, &str, c);
	if (err || parse_split_by(str, &s->vip_flags))
		return -EINVAL;
	return 0;
}

/* One backend object {"addr":"IP:PORT","weight":W} of color col, position i. */
static int doc_backend(json_object *b, struct fleet_service *s, __u8 col, size_t i,
		       struct doc_ctx *c)
{
	struct fleet_backend *fb = &s->be[col][i];
	struct bgs_endpoint ep;
	const char *addr;
	__s64 w;
	char at[32];

	snprintf(at, sizeof(at), "backends.%s[%zu]", color_name(col), i);
	snprintf(c->at, sizeof(c->at), "%s", at);
	if (!json_object_is_type(b, json_type_object)) {
		pr_warn("not an object {\"addr\":\"IP:PORT\",\"weight\":W}\n");
		return -EINVAL;
	}
	if (only_keys(b, backend_keys) || str_member(b, "addr", sizeof(fb->addr), &addr, c) ||
	    parse_endpoint(addr, &ep) || check_backend_addr(addr, &ep) ||
	    check_backend_of(addr, &ep, &s->vip_ep, s->name) ||
	    int_member(b, "weight", 0, BGS_WEIGHT_MAX, &w, c)) {
		/* the member's name after the backend's place */
		char field[16];

		snprintf(field, sizeof(field), "%s", strcmp(c->at, at) ? c->at : "");
		snprintf(c->at, sizeof(c->at), "%s%s%s", at, field[0] ? "." : "", field);
		return -EINVAL;
	}
	if (s->lb == BGS_LB_MODULO && w != 1) {
		snprintf(c->at, sizeof(c->at), "%s.weight", at);
		pr_warn("%lld: a service with lb modulo spreads flows without weights (1)\n",
			(long long)w);
		return -EINVAL;
	}
	snprintf(fb->addr, sizeof(fb->addr), "%s", addr);
	fb->weight = w;
	return 0;
}

/* backends: {"blue":[...],"green":[...]}, both there. */
static int doc_backends(json_object *o, struct fleet_service *s, struct doc_ctx *c)
{
	json_object *bes, *arr;
	size_t i, n;
	__u8 col;

	if (member(o, "backends", json_type_object, &bes, c) || only_keys(bes, color_keys))
		return -EINVAL;
	for (col = 0; col < BGS_NCOLORS; col++) {
		char key[24];

		snprintf(key, sizeof(key), "%s", color_name(col));
		if (member(bes, key, json_type_array, &arr, c)) {
			snprintf(c->at, sizeof(c->at), "backends.%s", key);
			return -EINVAL;
		}
		n = json_object_array_length(arr);
		snprintf(c->at, sizeof(c->at), "backends.%s", key);
		if (n > BGS_MAX_BACKENDS) {
			pr_warn("%zu backends: a color has at most %d\n", n, BGS_MAX_BACKENDS);
			return -EINVAL;
		}
		if (s->lb == BGS_LB_MAGLEV && n >= s->table_size) {
			pr_warn("%zu backends: as many as the table has positions (%u)\n", n,
				s->table_size);
			return -EINVAL;
		}
		for (i = 0; i < n; i++)
			if (doc_backend(json_object_array_get_idx(arr, i), s, col, i, c))
				return -EINVAL;
		s->nbe[col] = n;
	}
	return 0;
}

/* A backend listed twice, in one color or in both, is a document no agent can converge to. */
static int doc_unique(const struct fleet_service *s, struct doc_ctx *c)
{
	struct bgs_endpoint a, b;
	__u32 col, i, d, j;

	for (col = 0; col < BGS_NCOLORS; col++)
		for (i = 0; i < s->nbe[col]; i++) {
			parse_endpoint(s->be[col][i].addr, &a);
			for (d = col; d < BGS_NCOLORS; d++)
				for (j = d == col ? i + 1 : 0; j < s->nbe[d]; j++) {
					parse_endpoint(s->be[d][j].addr, &b);
					if (memcmp(a.addr, b.addr, sizeof(a.addr)) ||
					    a.port != b.port)
						continue;
					snprintf(c->at, sizeof(c->at), "backends.%s[%u]",
						 color_name(d), j);
					pr_warn("%s is also backends.%s[%u] (a backend serves one "
						"color, once)\n",
						s->be[d][j].addr, color_name(col), i);
					return -EINVAL;
				}
		}
	return 0;
}

/* A color that takes new flows (blue below a green share of 10000, green above 0) has a
 * backend of weight above 0, as a local flip or shift requires. A new service (generation 1,
 * as `service add --etcd` writes it) may have no backend at all.
 */
static int doc_takes_flows(const struct fleet_service *s, struct doc_ctx *c)
{
	__u32 col, i;
	bool any;

	if (s->generation == 1 && !s->nbe[BGS_BLUE] && !s->nbe[BGS_GREEN])
		return 0;
	for (col = 0; col < BGS_NCOLORS; col++) {
		if (col == BGS_BLUE ? s->green_share == FLEET_SHARE_MAX : s->green_share == 0)
			continue;
		for (i = 0, any = false; i < s->nbe[col]; i++)
			any |= s->be[col][i].weight > 0;
		if (any)
			continue;
		snprintf(c->at, sizeof(c->at), "backends.%s", color_name(col));
		pr_warn("%s takes new flows (green_share %d) and has no backend of weight above "
			"0\n",
			color_name(col), s->green_share);
		return -EINVAL;
	}
	return 0;
}

/* In valid JSON text: the members (KEY: VALUE) of all its objects, and *nul if a string or a
 * key has a \u0000 escape (json-c ends its C strings there: "blue\u0000x" would be "blue").
 */
static size_t text_members(const char *json, size_t len, bool *nul)
{
	bool in_str = false;
	size_t i, n = 0;

	*nul = false;
	for (i = 0; i < len; i++) {
		if (json[i] == '"') {
			in_str = !in_str;
		} else if (in_str && json[i] == '\\' && i + 1 < len) {
			*nul |= json[i + 1] == 'u' && len - i >= 6 &&
				!strncmp(json + i + 2, "0000", 4);
			i++;
		} else if (!in_str && json[i] == ':') {
			n++;
		}
	}
	return n;
}

/* The members of all objects of the parsed tree: fewer than the text's when a key is there twice
 * in one object (json-c keeps the last silently).
 */
static size_t tree_members(json_object *o)
{
	size_t n = 0, i;

	if (json_object_is_type(o, json_type_object)) {
		json_object_object_foreach(o, k, v)
		{
			(void)k;
			n += 1 + tree_members(v);
		}
	} else if (json_object_is_type(o, json_type_array)) {
		for (i = 0; i < json_object_array_length(o); i++)
			n += tree_members(json_object_array_get_idx(o, i));
	}
	return n;
}

/* What the parse does not catch: not an object, a \u0000, a key twice. */
static int doc_text(const char *json, size_t len, json_object *o)
{
	size_t members;
	bool nul;

	if (!json_object_is_type(o, json_type_object)) {
		pr_warn("not a JSON object\n");
		return -EINVAL;
	}
	members = text_members(json, len, &nul);
	if (nul) {
		pr_warn("a NUL character (\\u0000) in a string\n");
		return -EINVAL;
	}
	if (members != tree_members(o)) {
		pr_warn("a key given twice in one object\n");
		return -EINVAL;
	}
	return 0;
}

/* The parse: one JSON object, nothing after it but white space. NULL with the reason. */
static json_object *doc_parse(const char *json, size_t len, struct doc_ctx *c)
{
	struct json_tokener *tok = json_tokener_new();
	json_object *o = NULL;
	size_t end, i;

	c->at[0] = '\0';
	if (!tok) {
		pr_warn("out of memory\n");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS |
					    JSON_TOKENER_VALIDATE_UTF8);
	if (strlen(json) != len) {
		pr_warn("a NUL byte at byte %zu\n", strlen(json));
		goto out;
	}
	o = json_tokener_parse_ex(tok, json, len);
	if (!o) {
		enum json_tokener_error e = json_tokener_get_error(tok);

		pr_warn("not JSON: %s at byte %zu\n",
			e == json_tokener_continue ? "it ends early" : json_tokener_error_desc(e),
			json_tokener_get_parse_end(tok));
		goto out;
	}
	end = json_tokener_get_parse_end(tok);
	for (i = end; i < len && strchr(" \t\r\n", json[i]); i++)
		;
	if (i < len)
		pr_warn("bytes after the JSON object, at byte %zu\n", i);
	if (i < len || doc_text(json, end, o)) {
		json_object_put(o);
		o = NULL;
	}
out:
	json_tokener_free(tok);
	return o;
}

static void one_line(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

/* Decode and check a document (len bytes at json, NUL-terminated); key_name: the name its key
 * gives it, or NULL. 0, or -EINVAL with why: "where: what" (one line). Nothing is printed.
 */
int fleet_doc_decode(const char *json, size_t len, const char *key_name, struct fleet_service *s,
		     char *why, size_t why_len)
{
	struct doc_ctx c = { .at = "" };
	char msg[FLEET_WHY_LEN];
	json_object *o;
	int err = -EINVAL;

	memset(s, 0, sizeof(*s));
	s->previous_share = -1;
	bgs_log_capture(msg, sizeof(msg));
	o = doc_parse(json, len, &c);
	if (o && !only_keys(o, doc_keys) && !doc_scalars(o, key_name, s, &c) &&
	    !doc_backends(o, s, &c) && !doc_unique(s, &c) && !doc_takes_flows(s, &c))
		err = 0;
	bgs_log_capture(NULL, 0);
	json_object_put(o);
	if (err) {
		snprintf(why, why_len, "%s%s%s", c.at, c.at[0] ? ": " : "",
			 msg[0] ? msg : "not valid");
		one_line(why);
	}
	return err;
}

char *fleet_doc_encode(const struct fleet_service *s)
{
	json_object *o = json_object_new_object(), *bes = json_object_new_object();
	char *out;
	__u32 c, i;

	json_object_object_add(o, "name", json_object_new_string(s->name));
	json_object_object_add(o, "vip", json_object_new_string(s->vip));
	json_object_object_add(o, "proto", json_object_new_string(proto_name(s->proto)));
	json_object_object_add(o, "generation", json_object_new_int64(s->generation));
	json_object_object_add(o, "green_share", json_object_new_int(s->green_share));
	json_object_object_add(o, "previous_share",
			       s->previous_share < 0 ? NULL :
						       json_object_new_int(s->previous_share));
	json_object_object_add(
		o, "lb", json_object_new_string(s->lb == BGS_LB_MODULO ? "modulo" : "maglev"));
	json_object_object_add(o, "table_size", json_object_new_int64(s->table_size));
	json_object_object_add(
		o, "split_by",
		json_object_new_string(s->vip_flags & BGS_VIP_SPLIT_CLIENT ? "client" : "flow"));
	for (c = 0; c < BGS_NCOLORS; c++) {
		json_object *arr = json_object_new_array();

		for (i = 0; i < s->nbe[c]; i++) {
			json_object *b = json_object_new_object();

			json_object_object_add(b, "addr", json_object_new_string(s->be[c][i].addr));
			json_object_object_add(b, "weight",
					       json_object_new_int(s->be[c][i].weight));
			json_object_array_add(arr, b);
		}
		json_object_object_add(bes, color_name(c), arr);
	}
	json_object_object_add(o, "backends", bes);
	out = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return out;
}

/* The document a writer is about to put, encoded and then checked by the same decoder the
 * agents use: a writer never writes what an agent would refuse. *out: to free.
 */
int fleet_doc_encode_checked(const struct fleet_service *s, char **out, char *why, size_t why_len)
{
	struct fleet_service *back = calloc(1, sizeof(*back));
	int err;

	*out = fleet_doc_encode(s);
	if (!*out || !back) {
		free(back);
		free(*out);
		*out = NULL;
		snprintf(why, why_len, "out of memory");
		return -ENOMEM;
	}
	err = fleet_doc_decode(*out, strlen(*out), s->name, back, why, why_len);
	free(back);
	if (err) {
		free(*out);
		*out = NULL;
	}
	return err;
}
