// SPDX-License-Identifier: GPL-2.0
/* exporter.c: `exporter`: the Prometheus /metrics endpoint, served by libmicrohttpd (mhd.h). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include "commands.h"
#include "log.h"
#include "mhd.h"
#include "specs.h"
#include "snapshot.h"
#include "state.h"
#include "util.h"

#ifndef BGS_VERSION
#define BGS_VERSION "0.1.0"
#endif

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* What a client gets, so that no client and no crowd of them starves a scrape: the server's
 * EXP_THREADS threads poll their connections with epoll and never wait on one client (only on a
 * collection, shared by every scrape waiting); a connection idle (no byte received or sent) for
 * EXP_IDLE_SEC is closed; one peer address holds at most EXP_PER_PEER connections;
 * EXP_MAX_CONNS in all, each with a request buffer of at most EXP_CONN_MEMORY bytes (a header
 * that outgrows it is answered 431), so the memory the exporter can be made to hold is bounded.
 */
#define EXP_THREADS 4
#define EXP_IDLE_SEC 10
#define EXP_PER_PEER 64
#define EXP_MAX_CONNS 4096
#define EXP_CONN_MEMORY (16 * 1024)
#define EXP_BACKLOG 1024

/* Scrapes share their reads of the maps. A scrape suspends its connection and joins the list
 * of waiters; the collector thread takes the whole list, reads the maps once (after every scrape
 * on it arrived, so each sees the state as it is then) and resumes them all with one response,
 * which each queues on its own connection. A crowd of scrapes costs a collection or two, not one
 * each; no server thread ever waits on a collection, and the data plane never waits on any.
 */
struct batch {
	struct MHD_Response *resp; /* NULL: none could be made, the connection is closed */
	unsigned int code;
	unsigned int refs; /* waiters yet to queue it */
};

struct waiter {
	struct waiter *next;
	struct MHD_Connection *conn;
	struct batch *batch; /* set by the collector before it resumes the connection */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct waiter *head;
	bool stop;
} coll = { .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER };

static void metric_head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void backend_label(const struct bgs_backend_view *bv, char *buf, size_t len)
{
	fmt_endpoint(bv->be.addr, bv->be.port, bv->be.family, buf, len);
}

/* Per-backend series: one line per backend of every color of every service. */
static void backend_series(FILE *f, const struct bgs_snapshot *s, const char *name,
			   const char *extra, size_t off)
{
	char b[BGS_ADDRSTR_LEN];
	size_t i, j;
	int c;

	for (i = 0; i < s->nsvcs; i++)
		for (c = 0; c < BGS_NCOLORS; c++)
			for (j = 0; j < s->svcs[i].color[c].nbackends; j++) {
				const struct bgs_backend_view *bv =
					&s->svcs[i].color[c].backends[j];

				backend_label(bv, b, sizeof(b));
				fprintf(f,
					"%s{service=\"%s\",color=\"%s\",backend=\"%s\"%s} %llu\n",
					name, s->svcs[i].rec.name, color_name(c), b, extra,
					(unsigned long long)*(const __u64 *)((const char *)&bv->st +
									     off));
			}
}

/* The build, and the flow table's size, use and evictions. */
static void render_head(FILE *f, const struct bgs_state *st, const struct bgs_snapshot *s)
{
	metric_head(f, "bgswitch_info", "gauge", "Version of bgswitch and of its map layout.");
	fprintf(f, "bgswitch_info{version=\"%s\",layout=\"%u\"} 1\n", BGS_VERSION,
		st->cfg.layout_version);
	metric_head(f, "bgswitch_flow_table_capacity", "gauge", "Entries the flow table holds.");
	fprintf(f, "bgswitch_flow_table_capacity %u\n", st->cfg.flow_entries);
	metric_head(f, "bgswitch_flow_table_entries", "gauge",
		    "Entries in the flow table, live or not.");
	fprintf(f, "bgswitch_flow_table_entries %llu\n", (unsigned long long)s->flow_entries);

	metric_head(f, "bgswitch_flow_table_evictions_total", "counter",
		    "Entries the flow table's LRU dropped to make room (inserts - entries - "
		    "collected).");
	fprintf(f, "bgswitch_flow_table_evictions_total %llu\n", (unsigned long long)s->evicted);
}

/* Per service: its colors, shares, generation and live flows. */
static void render_services(FILE *f, const struct bgs_snapshot *s)
{
	char b[BGS_ADDRSTR_LEN];
	size_t i, j;
	int c;

	metric_head(f, "bgswitch_active_color", "gauge",
		    "1 for the color every new flow of a service goes to, 0 otherwise (both 0: "
		    "split).");
	for (i = 0; i < s->nsvcs; i++)
		for (c = 0; c < BGS_NCOLORS; c++)
			fprintf(f, "bgswitch_active_color{service=\"%s\",color=\"%s\"} %d\n",
				s->svcs[i].rec.name, color_name(c),
				share_color(s->svcs[i].sw.share) == c);
	metric_head(f, "bgswitch_color_share", "gauge",
		    "Part of the new flows of a service that goes to a color, 0 to 1.");
	for (i = 0; i < s->nsvcs; i++)
		for (c = 0; c < BGS_NCOLORS; c++)
			fprintf(f, "bgswitch_color_share{service=\"%s\",color=\"%s\"} %g\n",
				s->svcs[i].rec.name, color_name(c),
				(c == BGS_GREEN ? s->svcs[i].sw.share :
						  BGS_SHARE_ALL - s->svcs[i].sw.share) /
					(double)BGS_SHARE_ALL);
	metric_head(f, "bgswitch_generation", "gauge", "Changes made to a service so far.");
	for (i = 0; i < s->nsvcs; i++)
		fprintf(f, "bgswitch_generation{service=\"%s\"} %u\n", s->svcs[i].rec.name,
			s->svcs[i].sw.generation);
	metric_head(f, "bgswitch_flows", "gauge",
		    "Live flows per service and color (those of the inactive color are draining).");
	for (i = 0; i < s->nsvcs; i++)
		for (c = 0; c < BGS_NCOLORS; c++)
			fprintf(f, "bgswitch_flows{service=\"%s\",color=\"%s\"} %llu\n",
				s->svcs[i].rec.name, color_name(c),
				(unsigned long long)s->svcs[i].color[c].live);
	metric_head(f, "bgswitch_local_flows", "gauge",
		    "Local clients' open sockets per service and color (counted in bgswitch_flows "
		    "too).");
	for (i = 0; i < s->nsvcs; i++)
		for (c = 0; c < BGS_NCOLORS; c++)
			fprintf(f, "bgswitch_local_flows{service=\"%s\",color=\"%s\"} %llu\n",
				s->svcs[i].rec.name, color_name(c),
				(unsigned long long)s->svcs[i].color[c].local);
	metric_head(f, "bgswitch_backend_flows", "gauge", "Live flows per backend.");
	for (i = 0; i < s->nsvcs; i++)
		for (c = 0; c < BGS_NCOLORS; c++)
			for (j = 0; j < s->svcs[i].color[c].nbackends; j++) {
				const struct bgs_backend_view *bv =
					&s->svcs[i].color[c].backends[j];

				backend_label(bv, b, sizeof(b));
				fprintf(f,
					"bgswitch_backend_flows{service=\"%s\",color=\"%s\","
					"backend=\"%s\",state=\"%s\"} %u\n",
					s->svcs[i].rec.name, color_name(c), b,
					backend_state_name(bv->be.state), bv->live);
			}
}

/* Per backend and per service: packets, bytes, new flows, misses and drops. */
static void render_traffic(FILE *f, const struct bgs_snapshot *s)
{
	size_t i, j;

	metric_head(f, "bgswitch_packets_total", "counter",
		    "Packets per backend; direction in is client to backend, out is the reply.");
	backend_series(f, s, "bgswitch_packets_total", ",direction=\"in\"",
		       offsetof(struct bgs_backend_stats, rx_packets));
	backend_series(f, s, "bgswitch_packets_total", ",direction=\"out\"",
		       offsetof(struct bgs_backend_stats, tx_packets));
	metric_head(f, "bgswitch_bytes_total", "counter", "IP bytes per backend and direction.");
	backend_series(f, s, "bgswitch_bytes_total", ",direction=\"in\"",
		       offsetof(struct bgs_backend_stats, rx_bytes));
	backend_series(f, s, "bgswitch_bytes_total", ",direction=\"out\"",
		       offsetof(struct bgs_backend_stats, tx_bytes));
	metric_head(f, "bgswitch_new_flows_total", "counter", "Flows started on a backend.");
	backend_series(f, s, "bgswitch_new_flows_total", "",
		       offsetof(struct bgs_backend_stats, new_flows));
	metric_head(f, "bgswitch_backend_resets_total", "counter", "TCP resets sent by a backend.");
	backend_series(f, s, "bgswitch_backend_resets_total", "",
		       offsetof(struct bgs_backend_stats, resets));

	metric_head(f, "bgswitch_flow_misses_total", "counter",
		    "Flow-table misses: kind syn starts a flow, kind nosyn is re-pinned.");
	for (i = 0; i < s->nsvcs; i++)
		fprintf(f,
			"bgswitch_flow_misses_total{service=\"%s\",kind=\"syn\"} %llu\n"
			"bgswitch_flow_misses_total{service=\"%s\",kind=\"nosyn\"} %llu\n",
			s->svcs[i].rec.name, (unsigned long long)s->svcs[i].st.syn_miss,
			s->svcs[i].rec.name, (unsigned long long)s->svcs[i].st.nosyn_miss);
	metric_head(f, "bgswitch_second_chances_total", "counter",
		    "Non-SYN misses re-pinned: previous color while it drains, else active.");
	for (i = 0; i < s->nsvcs; i++)
		fprintf(f, "bgswitch_second_chances_total{service=\"%s\"} %llu\n",
			s->svcs[i].rec.name, (unsigned long long)s->svcs[i].st.second_chance);
	metric_head(f, "bgswitch_flow_reopens_total", "counter",
		    "SYNs on a closed or idle entry, started again on the active color.");
	for (i = 0; i < s->nsvcs; i++)
		fprintf(f, "bgswitch_flow_reopens_total{service=\"%s\"} %llu\n",
			s->svcs[i].rec.name, (unsigned long long)s->svcs[i].st.reopen);
	metric_head(f, "bgswitch_drops_total", "counter",
		    "Packets of a service dropped, by reason.");
	for (i = 0; i < s->nsvcs; i++)
		for (j = 0; j < BGS_DROP_MAX; j++)
			fprintf(f, "bgswitch_drops_total{service=\"%s\",reason=\"%s\"} %llu\n",
				s->svcs[i].rec.name, bgs_drop_names[j],
				(unsigned long long)s->svcs[i].st.drops[j]);
}

/* The node's counters: drops, packets passed, fragments, ICMP errors, the fast path. */
static void render_node(FILE *f, const struct bgs_snapshot *s)
{
	size_t i, j;

	metric_head(f, "bgswitch_node_drops_total", "counter",
		    "Every drop on the node by reason, those that belong to no service included.");
	for (j = 0; j < BGS_DROP_MAX; j++)
		fprintf(f, "bgswitch_node_drops_total{reason=\"%s\"} %llu\n", bgs_drop_names[j],
			(unsigned long long)s->drops[j]);
	metric_head(f, "bgswitch_ingress_packets_total", "counter",
		    "Packets seen by the XDP ingress program.");
	fprintf(f, "bgswitch_ingress_packets_total %llu\n",
		(unsigned long long)s->stats[BGS_STAT_RX]);
	metric_head(f, "bgswitch_egress_packets_total", "counter",
		    "Packets seen by the TC egress program.");
	fprintf(f, "bgswitch_egress_packets_total %llu\n",
		(unsigned long long)s->stats[BGS_STAT_TX]);
	metric_head(f, "bgswitch_passed_packets_total", "counter",
		    "Ingress packets passed untouched, by reason.");
	for (i = 0; i < BGS_STAT_MAX; i++)
		if (bgs_stat_passed[i])
			fprintf(f, "bgswitch_passed_packets_total{reason=\"%s\"} %llu\n",
				bgs_stat_names[i], (unsigned long long)s->stats[i]);
	metric_head(f, "bgswitch_fragments_total", "counter",
		    "Fragments steered: kind first is steered by its ports, later follows it.");
	fprintf(f,
		"bgswitch_fragments_total{kind=\"first\"} %llu\n"
		"bgswitch_fragments_total{kind=\"later\"} %llu\n",
		(unsigned long long)s->stats[BGS_STAT_FRAG_FIRST],
		(unsigned long long)s->stats[BGS_STAT_FRAG_LATER]);
	metric_head(f, "bgswitch_icmp_errors_total", "counter",
		    "ICMP errors about a flow: translated in toward its backend, out toward its "
		    "client, or untouched for want of a flow.");
	fprintf(f,
		"bgswitch_icmp_errors_total{direction=\"in\"} %llu\n"
		"bgswitch_icmp_errors_total{direction=\"out\"} %llu\n"
		"bgswitch_icmp_errors_total{direction=\"no_flow\"} %llu\n",
		(unsigned long long)s->stats[BGS_STAT_ICMP_IN],
		(unsigned long long)s->stats[BGS_STAT_ICMP_OUT],
		(unsigned long long)s->stats[BGS_STAT_ICMP_NO_FLOW]);
	metric_head(f, "bgswitch_fast_path_packets_total", "counter",
		    "Rewritten packets by how they left: xdp_tx, redirect, or the stack (no_neigh, "
		    "stack).");
	fprintf(f,
		"bgswitch_fast_path_packets_total{action=\"xdp_tx\"} %llu\n"
		"bgswitch_fast_path_packets_total{action=\"redirect\"} %llu\n"
		"bgswitch_fast_path_packets_total{action=\"no_neigh\"} %llu\n"
		"bgswitch_fast_path_packets_total{action=\"stack\"} %llu\n",
		(unsigned long long)s->stats[BGS_STAT_FWD_TX],
		(unsigned long long)s->stats[BGS_STAT_FWD_REDIRECT],
		(unsigned long long)s->stats[BGS_STAT_FWD_NO_NEIGH],
		(unsigned long long)s->stats[BGS_STAT_FWD_STACK]);
}

/* One node-wide counter: its help, its type and its one sample. */
static void node_counter(FILE *out, const char *name, const char *help, __u64 value)
{
	metric_head(out, name, "counter", help);
	fprintf(out, "%s %llu\n", name, (unsigned long long)value);
}

/* Replies rewritten or left untouched, and flows given no entry. */
static void render_replies(FILE *f, const struct bgs_snapshot *s)
{
	node_counter(f, "bgswitch_reply_nat_total",
		     "Replies whose source was rewritten from backend to VIP.",
		     s->stats[BGS_STAT_REPLY_NAT]);
	node_counter(f, "bgswitch_reply_no_flow_total",
		     "Packets from a backend address and port with no live flow of theirs, left "
		     "untouched.",
		     s->stats[BGS_STAT_REPLY_NO_FLOW]);
	node_counter(f, "bgswitch_reply_wrong_dev_total",
		     "Packets from a flow's backend that came in elsewhere than from the backend, "
		     "left untouched.",
		     s->stats[BGS_STAT_REPLY_WRONG_DEV]);
	node_counter(f, "bgswitch_reply_superseded_total",
		     "Backend SYNs on a closed flow (a new connection on its addresses and ports): "
		     "the flow's entry deleted, the packet left untouched.",
		     s->stats[BGS_STAT_REPLY_SUPERSEDED]);
	node_counter(f, "bgswitch_untracked_flows_total",
		     "New flows over the insert limit: forwarded, but given no flow entry.",
		     s->stats[BGS_STAT_UNTRACKED]);
	node_counter(f, "bgswitch_rst_misses_total",
		     "TCP RSTs that missed the flow table: forwarded, no entry created.",
		     s->stats[BGS_STAT_RST_MISS]);
}

static void render(FILE *f, const struct bgs_state *st, const struct bgs_snapshot *s)
{
	render_head(f, st, s);
	render_services(f, s);
	render_traffic(f, s);
	render_node(f, s);
	render_replies(f, s);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int code, const char *type,
			     char *body, size_t len)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	ret = MHD_queue_response(conn, code, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned int code, const char *text)
{
	char *body = strdup(text);

	return body ? reply(conn, code, "text/plain; charset=utf-8", body, strlen(body)) : MHD_NO;
}

static struct MHD_Response *text_response(const char *text)
{
	struct MHD_Response *resp;

	resp = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
	if (resp)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
					"text/plain; charset=utf-8");
	return resp;
}

/* Read the maps and render them: the response to every scrape waiting for this collection. */
static struct MHD_Response *collect(unsigned int *code)
{
	struct MHD_Response *resp = NULL;
	struct bgs_snapshot snap;
	struct bgs_state st;
	char *body = NULL;
	size_t len = 0;
	FILE *f;
	int err;

	/* Open the pins afresh: a scrape always sees the state as it is now. */
	err = state_open(&st, false);
	if (!err) {
		err = snapshot_take(&st, NULL, &snap);
		if (!err) {
			f = open_memstream(&body, &len);
			if (f) {
				render(f, &st, &snap);
				fclose(f);
			} else {
				err = -ENOMEM;
			}
			snapshot_free(&snap);
		}
		state_close(&st);
	}
	if (!err && body)
		resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (resp) {
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
		*code = MHD_HTTP_OK;
		return resp;
	}
	free(body);
	*code = MHD_HTTP_SERVICE_UNAVAILABLE;
	return text_response("bgswitch state unavailable (see the exporter's log)\n");
}

static void batch_put(struct batch *b)
{
	bool last;

	pthread_mutex_lock(&coll.lock);
	last = !--b->refs;
	pthread_mutex_unlock(&coll.lock);
	if (!last)
		return;
	if (b->resp)
		MHD_destroy_response(b->resp);
	free(b);
}

/* The collector thread: one collection for every scrape waiting, until told to stop and none
 * is left waiting.
 */
static void *collector(void *arg)
{
	struct waiter *list, *w, *next;
	struct batch *b;
	unsigned int n;

	(void)arg;
	for (;;) {
		pthread_mutex_lock(&coll.lock);
		while (!coll.head && !coll.stop)
			pthread_cond_wait(&coll.wake, &coll.lock);
		list = coll.head;
		coll.head = NULL;
		pthread_mutex_unlock(&coll.lock);
		if (!list)
			return NULL;
		b = calloc(1, sizeof(*b));
		if (b)
			b->resp = collect(&b->code);
		for (n = 0, w = list; w; w = w->next)
			n++;
		if (b)
			b->refs = n;
		/* A resumed connection may end (and free its waiter) at once: read next first. */
		for (w = list; w; w = next) {
			next = w->next;
			w->batch = b;
			MHD_resume_connection(w->conn);
		}
	}
}

static void exporter_stop_collector(pthread_t tid)
{
	pthread_mutex_lock(&coll.lock);
	coll.stop = true;
	pthread_cond_signal(&coll.wake);
	pthread_mutex_unlock(&coll.lock);
	pthread_join(tid, NULL);
}

/* GET /metrics: the first call suspends the connection for the next collection; the call after
 * the collector resumed it queues that collection's response.
 */
static enum MHD_Result scrape(struct MHD_Connection *conn, void **req_cls)
{
	struct waiter *w = *req_cls;
	enum MHD_Result ret = MHD_NO;
	struct batch *b;

	if (w) {
		b = w->batch;
		w->batch = NULL;
		if (b && b->resp)
			ret = MHD_queue_response(conn, b->code, b->resp);
		if (b)
			batch_put(b);
		return ret;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return MHD_NO;
	w->conn = conn;
	pthread_mutex_lock(&coll.lock);
	if (coll.stop) {
		pthread_mutex_unlock(&coll.lock);
		free(w);
		return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
				  "bgswitch exporter stopping\n");
	}
	*req_cls = w;
	MHD_suspend_connection(conn);
	w->next = coll.head;
	coll.head = w;
	pthread_cond_signal(&coll.wake);
	pthread_mutex_unlock(&coll.lock);
	return MHD_YES;
}

/* The end of a request: a waiter whose connection closed before it queued gives its share. */
static void request_done(void *cls, struct MHD_Connection *conn, void **req_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct waiter *w = *req_cls;

	(void)cls;
	(void)conn;
	(void)toe;
	if (!w)
		return;
	if (w->batch)
		batch_put(w->batch);
	free(w);
	*req_cls = NULL;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_len, void **req_cls)
{
	(void)cls;
	(void)version;
	(void)upload;
	(void)upload_len;
	if (strcmp(method, "GET") && strcmp(method, "HEAD"))
		return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "GET /metrics\n");
	if (!strcmp(url, "/"))
		return reply_text(conn, MHD_HTTP_OK, "bgswitch exporter: metrics at /metrics\n");
	if (strcmp(url, "/metrics"))
		return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found; metrics at /metrics\n");
	return scrape(conn, req_cls);
}

/* Collect expired flows, as `bgswitch gc` does, between scrapes. */
static void exporter_gc(void)
{
	struct bgs_state st;
	__u64 deleted = 0;

	if (state_open(&st, true))
		return;
	/* As gc does: the drain first, so that a finished one keeps no expired UDP entry. */
	if (!drain_settle(&st) && !flows_collect(&st, &deleted))
		state_repair(&st);
	if (deleted)
		pr_debug("exporter: collected %llu expired flow entries\n",
			 (unsigned long long)deleted);
	state_close(&st);
}

/* Room for EXP_MAX_CONNS descriptors (the default soft limit is often 1024): raise the soft
 * limit as far as the hard one allows, and take no more connections than it leaves room for.
 */
static unsigned int exporter_conn_limit(void)
{
	rlim_t want = EXP_MAX_CONNS + 64;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return 256;
	if (rl.rlim_cur < want) {
		rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur >= want)
		return EXP_MAX_CONNS;
	return rl.rlim_cur > 128 ? (unsigned int)rl.rlim_cur - 64 : 64;
}

struct exporter_args {
	const char *listen;
	struct bgs_endpoint ep; /* listen, parsed */
	__u64 gc_ns;
};

static int parse_gc_interval(const char *arg, void *dst)
{
	if (!strcmp(arg, "0")) {
		*(__u64 *)dst = 0;
		return 0;
	}
	return parse_duration_ns(arg, 1000000000ULL, 3600000000000ULL, dst);
}

static const struct bgs_opt exporter_opts[] = {
	{ .name = "listen",
	  .short_name = 'l',
	  .type = BGS_OPT_STR,
	  .off = offsetof(struct exporter_args, listen),
	  .metavar = "ADDR:PORT",
	  .help = "where to listen, e.g. 127.0.0.1:9465 (required)" },
	{ .name = "gc-interval",
	  .short_name = 'g',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct exporter_args, gc_ns),
	  .metavar = "D",
	  .help = "collect expired flows every D (default 10s; 0: never)",
	  .parse = parse_gc_interval },
	BGS_OPT_END,
};

_Static_assert(EXP_IDLE_SEC == 10 && EXP_PER_PEER == 64 && EXP_MAX_CONNS == 4096,
	       "exporter's help text");

const struct bgs_cmd_spec bgs_spec_exporter = {
	.name = "exporter",
	.summary = "serve the counters as Prometheus metrics",
	.description = "Serve the counters as Prometheus metrics at http://ADDR:PORT/metrics until "
		       "SIGINT or SIGTERM. It binds only ADDR (an IPv4 address, or [IPv6]); "
		       "scrapes are served concurrently and read the pinned maps, never blocking "
		       "the data plane. No client can starve a scrape: a connection idle for 10 s "
		       "is closed, a peer holds at most 64 connections, 4096 in all.",
	.opts = exporter_opts,
};

static void exporter_sockaddr(const struct bgs_endpoint *ep, struct sockaddr_storage *ss,
			      unsigned int *flags)
{
	if (ep->family == BGS_AF_INET6) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;

		a6->sin6_family = AF_INET6;
		a6->sin6_port = ep->port;
		memcpy(&a6->sin6_addr, ep->addr, sizeof(a6->sin6_addr));
		*flags |= MHD_USE_IPv6;
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)ss;

		a4->sin_family = AF_INET;
		a4->sin_port = ep->port;
		a4->sin_addr.s_addr = ep->addr[0];
	}
}

/* Serve until SIGINT or SIGTERM, collecting expired flows every gc_ns. */
static int exporter_serve(const struct exporter_args *a)
{
	struct sockaddr_storage ss = { 0 };
	struct MHD_Daemon *d;
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
			     MHD_ALLOW_SUSPEND_RESUME,
		     conns;
	__u64 gc_ns = a->gc_ns;
	pthread_t tid;
	sigset_t set;
	int sig, err;

	exporter_sockaddr(&a->ep, &ss, &flags);
	/* Signals are taken by sigwait below; the server's threads inherit the mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	conns = exporter_conn_limit();
	err = pthread_create(&tid, NULL, collector, NULL);
	if (err) {
		pr_warn("cannot start the collector thread: %s\n", strerror(err));
		return -err;
	}
	d = MHD_start_daemon(flags, ntohs(a->ep.port), NULL, NULL, handle, NULL,
			     MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
			     MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)EXP_THREADS,
			     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)EXP_IDLE_SEC,
			     MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)EXP_PER_PEER,
			     MHD_OPTION_CONNECTION_LIMIT, conns, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
			     (size_t)EXP_CONN_MEMORY, MHD_OPTION_LISTEN_BACKLOG_SIZE,
			     (unsigned int)EXP_BACKLOG, MHD_OPTION_NOTIFY_COMPLETED, request_done,
			     NULL, MHD_OPTION_END);
	if (!d) {
		pr_warn("cannot listen on %s: %s\n", a->listen,
			strerror(errno ? errno : EADDRINUSE));
		exporter_stop_collector(tid);
		return -EADDRINUSE;
	}
	pr_info("exporter: serving http://%s/metrics (at most %u connections, %u per peer)\n",
		a->listen, conns, EXP_PER_PEER);
	fflush(stdout);
	for (;;) {
		struct timespec ts = { gc_ns / 1000000000ULL, gc_ns % 1000000000ULL };

		sig = gc_ns ? sigtimedwait(&set, NULL, &ts) : sigwaitinfo(&set, NULL);
		if (sig == SIGINT || sig == SIGTERM)
			break;
		if (sig < 0 && errno == EAGAIN)
			exporter_gc();
	}
	/* No suspended connection may outlive the daemon: the collector answers every waiter
	 * before it ends, and a scrape after that is answered 503 at once.
	 */
	exporter_stop_collector(tid);
	MHD_stop_daemon(d);
	pr_info("exporter: stopped\n");
	return 0;
}

int do_exporter(int argc, char **argv)
{
	struct exporter_args a = { .gc_ns = 10000000000ULL };
	struct bgs_parsed p;
	struct bgs_state st;
	int err;

	err = params_parse(&bgs_spec_exporter, argc, argv, &a, &p);
	if (err || p.help)
		return err;
	if (!a.listen) {
		pr_warn("exporter needs --listen ADDR:PORT (see 'bgswitch exporter --help')\n");
		return -EINVAL;
	}
	if (parse_endpoint(a.listen, &a.ep))
		return -EINVAL;
	/* Fail now, not at the first scrape, when there is no state to export. */
	err = state_open(&st, false);
	if (err)
		return err;
	state_close(&st);
	err = mhd_load();
	if (err)
		return err;
	return exporter_serve(&a);
}
